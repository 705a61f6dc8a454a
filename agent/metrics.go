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
	}
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ferry_replication_jobs_queued", Help: "Replication jobs in the queue, running ones included."},
		func() float64 { return float64(len(q.List())) })
	m.reg.MustRegister(m.jobs, m.running, m.bytes, m.duration, m.lastSuccess, queued,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observe(s hook.Snapshot, r *replicate.Result, d time.Duration) {
	m.jobs.WithLabelValues("success").Inc()
	if r.Summary != nil {
		m.bytes.WithLabelValues("read").Add(float64(r.Summary.BytesRead))
		m.bytes.WithLabelValues("new").Add(float64(r.Summary.BytesNew))
		m.bytes.WithLabelValues("stored").Add(float64(r.Summary.BytesStored))
		m.duration.WithLabelValues(r.Mode).Observe(d.Seconds())
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
