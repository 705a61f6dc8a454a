package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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
			Name: "ferry_replication_last_success_timestamp_seconds", Help: "When the newest snapshot of a volume was replicated (Unix time).",
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
	m.lastSuccess.WithLabelValues(s.SourceVolumeID, s.Replication.SnapshotNamespace).SetToCurrentTime()
}
