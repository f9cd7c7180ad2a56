//! Latency percentiles of a bench run, from an HdrHistogram.
//!
//! Keeping every sample and sorting them at the end (what `doozer bench`
//! did first) needs memory in proportion to the run's length: 100k ops/s
//! for an hour is 2.9 GB of samples. A histogram of fixed size keeps the
//! percentiles to three significant digits in about 190 KB, whatever the
//! number of samples, and histograms of several threads add up exactly.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies are recorded in whole microseconds (rounded to the nearest;
/// a reply within half a microsecond counts as 1 µs).
pub const LOWEST_MICROS: u64 = 1;
/// The longest latency the histogram tells apart: one hour. Anything
/// longer is recorded as one hour (a bench run stops sending at its
/// duration and gives up on replies [`super::GRACE`] later, so only a run
/// of more than an hour can get there).
pub const HIGHEST_MICROS: u64 = 3_600_000_000;
/// Each recorded value is kept to this many significant decimal digits
/// (a 250 µs latency is told apart from 251 µs; 25.0 ms from 25.1 ms).
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Latency percentiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

/// The latencies of a run (or of one thread of it).
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Histogram<u64>);

impl Default for LatencyHistogram {
    fn default() -> LatencyHistogram {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        let hist = Histogram::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS);
        LatencyHistogram(hist.expect("the bounds are valid constants"))
    }

    /// Records one latency given in nanoseconds.
    pub fn record_nanos(&mut self, nanos: u64) {
        let micros = (nanos.saturating_add(500) / 1000).clamp(LOWEST_MICROS, HIGHEST_MICROS);
        self.0.saturating_record(micros);
    }

    pub fn record(&mut self, latency: Duration) {
        self.record_nanos(latency.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    /// Adds another histogram's samples to this one.
    pub fn add(&mut self, other: &LatencyHistogram) {
        // Both have the same bounds, so adding cannot fail; counts saturate.
        let added = self.0.add(&other.0);
        assert!(added.is_ok(), "histograms of one bound add up: {added:?}");
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The percentiles (all zero when nothing was recorded).
    pub fn summary(&self) -> Latency {
        if self.0.is_empty() {
            return Latency::default();
        }
        let at = |q: f64| Duration::from_micros(self.0.value_at_quantile(q));
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_micros(self.0.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut h = LatencyHistogram::new();
        // 1..=1000 µs, once each.
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 1000);
        let lat = h.summary();
        assert_eq!(lat.p50, Duration::from_micros(500));
        assert_eq!(lat.p90, Duration::from_micros(900));
        assert_eq!(lat.p99, Duration::from_micros(990));
        assert_eq!(lat.p999, Duration::from_micros(999));
        assert_eq!(lat.max, Duration::from_micros(1000));
    }

    #[test]
    fn three_significant_digits_on_large_values() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::from_millis(123_456));
        let max = h.summary().max.as_secs_f64();
        assert!((max - 123.456).abs() / 123.456 < 1e-3, "{max}");
    }

    #[test]
    fn empty_and_out_of_range() {
        let h = LatencyHistogram::new();
        assert_eq!(h.summary(), Latency::default());
        let mut h = LatencyHistogram::new();
        h.record_nanos(0);
        h.record_nanos(400);
        assert_eq!(
            h.summary().max,
            Duration::from_micros(1),
            "below 1 µs counts as 1 µs"
        );
        h.record(Duration::from_secs(10 * 3600));
        let max = h.summary().max;
        assert!(
            max >= Duration::from_secs(3599) && max <= Duration::from_secs(3604),
            "{max:?}"
        );
        h.record_nanos(u64::MAX);
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn histograms_add_up() {
        let (mut a, mut b) = (LatencyHistogram::new(), LatencyHistogram::new());
        for _ in 0..90 {
            a.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            b.record(Duration::from_millis(5));
        }
        a.add(&b);
        assert_eq!(a.count(), 100);
        let lat = a.summary();
        assert_eq!(lat.p50, Duration::from_micros(100));
        assert_eq!(lat.p90, Duration::from_micros(100));
        assert!(lat.p99 >= Duration::from_micros(4995) && lat.p99 <= Duration::from_micros(5005));
    }

    #[test]
    fn memory_is_fixed() {
        let mut h = LatencyHistogram::new();
        let before = h.0.distinct_values();
        for i in 0..200_000u64 {
            h.record_nanos(i * 7919);
        }
        assert_eq!(
            h.0.distinct_values(),
            before,
            "recording never grows the histogram"
        );
        assert!(before * 8 < 256 << 10, "{before} counters");
    }
}
