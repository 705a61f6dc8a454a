package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/ferrydr/ferry/agent/queue"
	"github.com/ferrydr/ferry/agent/replicate"
	"github.com/ferrydr/ferry/csi/hook"
)

type metrics struct {
	reg         *prometheus.Registry
	jobs        *prometheus.CounterVec
	running     prometheus.Gauge
	bytes       *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	lastSuccess *prometheus.GaugeVec
	degraded    prometheus.Counter
	notWritten  *prometheus.CounterVec

	// Continuous verification (verifyloop.go).
	restorable          *prometheus.GaugeVec
	drillDuration       *prometheus.GaugeVec
	drillBytesPerSecond *prometheus.GaugeVec
	drillBytesFetched   prometheus.Counter
	drillRuns           *prometheus.CounterVec
	shardsMissing       *prometheus.GaugeVec
	shardsCorrupt       *prometheus.GaugeVec
	packsAtRisk         *prometheus.GaugeVec
	repairShards        prometheus.Counter
	verifyBytes         prometheus.Counter
	verifyRuns          *prometheus.CounterVec

	// Retention and prune.
	forgotten   prometheus.Counter
	pruneRuns   *prometheus.CounterVec
	prunedPacks prometheus.Counter
	prunedBytes prometheus.Counter
}

func newMetrics(q *queue.Queue) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_replication_jobs_total", Help: "Replication jobs ended, by result (success, retry, dropped).",
		}, []string{"result"}),
		running: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_replication_jobs_running", Help: "Replication jobs running now."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_replication_bytes_total", Help: "Bytes of replication: read from snapshots, new after dedupe, stored on the targets.",
		}, []string{"kind"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_replication_duration_seconds", Help: "Time to replicate one snapshot, by read mode (delta, allocated, full).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}, []string{"mode"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_replication_last_success_timestamp_seconds", Help: "Creation time of the newest replicated snapshot of a volume (Unix time): RPO is now minus this.",
		}, []string{"volume", "namespace"}),
		degraded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_backup_degraded_total", Help: "Backups committed while a target was down: restorable, with less redundancy until repair.",
		}),
		notWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_backup_not_written_total", Help: "What degraded backups did not write to the targets that were down (kind: shards, objects); repair writes it.",
		}, []string{"kind"}),

		restorable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_restorable_snapshot_timestamp_seconds",
			Help: "Creation time of the newest snapshot of a volume proven restorable by a drill or the last verification (Unix time; 0: none): RPO is now minus this.",
		}, []string{"volume", "namespace"}),
		drillDuration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_drill_duration_seconds", Help: "Time the last successful drill of a volume's newest snapshot took: RTO evidence.",
		}, []string{"volume"}),
		drillBytesPerSecond: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_drill_bytes_per_second", Help: "Volume bytes per second of the last successful drill of a volume.",
		}, []string{"volume"}),
		drillBytesFetched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_drill_bytes_fetched_total", Help: "Shard bytes drills downloaded from the targets (what rebuilt shards of a target down included): the egress drills cost.",
		}),
		drillRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_drill_runs_total", Help: "Drills of one snapshot, by result (ok, data_lost, error).",
		}, []string{"result"}),
		shardsMissing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_verify_shards_missing", Help: "Shards the last verification of a repository found missing. Label: the repository ID.",
		}, []string{"repository"}),
		shardsCorrupt: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_verify_shards_corrupt", Help: "Shards the last verification of a repository found corrupt or of the wrong size. Label: the repository ID.",
		}, []string{"repository"}),
		packsAtRisk: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_verify_packs_at_risk", Help: "Packs the last verification of a repository found with fewer than k+m healthy shards. Label: the repository ID.",
		}, []string{"repository"}),
		repairShards: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_repair_shards_total", Help: "Shards the agent rebuilt from the survivors and wrote back, repairing what verification found.",
		}),
		verifyBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_verify_bytes_read_total", Help: "Shard bytes verification downloaded to check data.",
		}),
		verifyRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_verify_runs_total", Help: "Verification runs, by result (ok, degraded, data_lost, error).",
		}, []string{"result"}),

		forgotten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_retention_forgotten_snapshots_total", Help: "Snapshots the retention rules (ferry.dev/keep-*) forgot after a replication.",
		}),
		pruneRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_prune_runs_total", Help: "Prune runs, by result (ok, error).",
		}, []string{"result"}),
		prunedPacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_prune_deleted_packs_total", Help: "Packs prune deleted (every shard of each).",
		}),
		prunedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_prune_deleted_bytes_total", Help: "Shard bytes prune deleted, over all targets.",
		}),
	}
	if q != nil { // in a cluster, the FerryJobs are the queue
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_replication_jobs_queued", Help: "Replication jobs in the queue, running ones included."},
			func() float64 { return float64(len(q.List())) }))
	}
	m.reg.MustRegister(m.jobs, m.running, m.bytes, m.duration, m.lastSuccess, m.degraded, m.notWritten,
		m.restorable, m.drillDuration, m.drillBytesPerSecond, m.drillBytesFetched, m.drillRuns, m.shardsMissing, m.shardsCorrupt, m.packsAtRisk,
		m.repairShards, m.verifyBytes, m.verifyRuns, m.forgotten, m.pruneRuns, m.prunedPacks, m.prunedBytes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(s hook.Snapshot, r *replicate.Result, d time.Duration) {
	m.jobs.WithLabelValues("success").Inc()
	m.forgotten.Add(float64(r.Forgotten))
	if r.Summary != nil {
		m.bytes.WithLabelValues("read").Add(float64(r.Summary.BytesRead))
		m.bytes.WithLabelValues("new").Add(float64(r.Summary.BytesNew))
		m.bytes.WithLabelValues("stored").Add(float64(r.Summary.BytesStored))
		m.duration.WithLabelValues(r.Mode).Observe(d.Seconds())
		if len(r.Summary.Degraded) > 0 {
			m.degraded.Inc()
			for _, t := range r.Summary.Degraded {
				m.notWritten.WithLabelValues("shards").Add(float64(t.Shards))
				m.notWritten.WithLabelValues("objects").Add(float64(t.Objects))
			}
		}
	}
	// The snapshot's own time, so that RPO = now - this gauge.
	at := s.CreatedAt
	if at.IsZero() || at.Unix() <= 0 {
		at = time.Now()
	}
	g := m.lastSuccess.WithLabelValues(s.SourceVolumeID, s.Replication.SnapshotNamespace)
	if cur := gaugeValue(g); float64(at.Unix()) > cur {
		g.Set(float64(at.Unix()))
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return 0
	}
	return m.GetGauge().GetValue()
}
