// Package metricstest reads series out of Prometheus metric families, for
// tests that assert what a scrape of /metrics shows.
package metricstest

import dto "github.com/prometheus/client_model/go"

// Sample is the value of the one series of name whose labels include want
// (a histogram's is its sample count); ok is false when there is none.
func Sample(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (v float64, ok bool) {
	for _, m := range mfs[name].GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		match := true
		for k, w := range want {
			match = match && labels[k] == w
		}
		if !match {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}
