//! The end-of-run numbers: this process's memory (current and peak resident set), the median
//! step time, the drive-wear estimate, and bytes written for
//! people to read.
//!
//! These are plain functions over numbers the engine has already counted; nothing here keeps
//! state or decides anything. Memory is read from `/proc/self/status`, so off Linux the memory
//! figures are `None` rather than wrong.

/// Peak resident set size of this process (`VmHWM` from `/proc/self/status`), bytes; `None`
/// off Linux or when the file cannot be read.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size (`VmRSS` from `/proc/self/status`), bytes; `None` off Linux.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// A `kB` field of `/proc/self/status`.
fn proc_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, key)
}

/// Finds `key` (e.g. `"VmHWM:"`) in the text of a `/proc/<pid>/status` file and returns its
/// value, which the kernel always gives in kB (KiB).
fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut fields = line[key.len()..].split_whitespace();
    let value = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => Some(value),
        _ => None,
    }
}

/// Median of a slice of seconds (`None` when empty); the input need not be sorted. Even
/// lengths give the mean of the two middle values. Values are ordered by `f64::total_cmp`, so a NaN
/// cannot panic the sort.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    let mid = v.len() / 2;
    let (lower, upper, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if xs.len() % 2 == 1 {
        return Some(upper);
    }
    // Every element left of `mid` is <= upper; the largest of them is the other middle value.
    let lower = lower.iter().copied().max_by(f64::total_cmp)?;
    Some((lower + upper) / 2.0)
}

/// Drive wear estimate: bytes written per 1,000 steps, rounded to the nearest byte; 0 when no
/// step ran.
pub fn wear_bytes_per_1000_steps(bytes_written: u64, steps: u64) -> u64 {
    if steps == 0 {
        return 0;
    }
    // u128 so that petabytes written times 1,000 cannot overflow.
    let steps = u128::from(steps);
    let per = (u128::from(bytes_written) * 1000 + steps / 2) / steps;
    u64::try_from(per).unwrap_or(u64::MAX)
}

/// Human-readable bytes in binary units for the on-screen summary: "512 B", "1.50 GiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut value = b as f64;
    let mut unit = 0;
    // Move up while the value would print as 1024.00 or more, so 1 GiB - 1 byte reads
    // "1.00 GiB", not "1024.00 MiB".
    while value >= 1023.995 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[4.0]), Some(4.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[5.0, 5.0, 1.0, 9.0, 9.0, 9.0]), Some(7.0));
        // A slow first step (compilation, cold cache) does not move the median.
        assert_eq!(median(&[30.0, 1.0, 1.1, 0.9, 1.0]), Some(1.0));
    }

    #[test]
    fn median_agrees_with_sorting() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for n in 1..60 {
            let xs: Vec<f64> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 1000) as f64 / 7.0
                })
                .collect();
            let mut sorted = xs.clone();
            sorted.sort_by(f64::total_cmp);
            let want = if n % 2 == 1 {
                sorted[n / 2]
            } else {
                (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
            };
            assert_eq!(median(&xs), Some(want), "n = {n}");
        }
    }

    #[test]
    fn peak_rss_is_at_least_current_rss() {
        if !cfg!(target_os = "linux") {
            assert_eq!(rss_bytes(), None);
            return;
        }
        let rss = rss_bytes().expect("VmRSS on Linux");
        let peak = peak_rss_bytes().expect("VmHWM on Linux");
        assert!(rss > 0);
        assert!(peak >= rss, "peak {peak} < current {rss}");
        assert_eq!(rss % 1024, 0, "the kernel reports kB");
    }

    #[test]
    fn status_parsing() {
        let status = "Name:\tzinf\nVmPeak:\t  200 kB\nVmHWM:\t  1536 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(1536));
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        assert_eq!(parse_status_kib("VmRSS:\t12 MB\n", "VmRSS:"), None);
    }

    #[test]
    fn wear_per_1000_steps() {
        assert_eq!(wear_bytes_per_1000_steps(0, 10), 0);
        assert_eq!(wear_bytes_per_1000_steps(123, 0), 0);
        assert_eq!(wear_bytes_per_1000_steps(5_000, 10), 500_000);
        assert_eq!(wear_bytes_per_1000_steps(1, 3), 333);
        assert_eq!(wear_bytes_per_1000_steps(2, 3), 667);
        assert_eq!(wear_bytes_per_1000_steps(u64::MAX, 1), u64::MAX);
        assert_eq!(wear_bytes_per_1000_steps(u64::MAX, 1000), u64::MAX);
    }

    #[test]
    fn human_readable_bytes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.00 KiB");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 29), "1.50 GiB");
        assert_eq!(human_bytes((1 << 30) - 1), "1.00 GiB");
        assert_eq!(human_bytes(5 << 40), "5.00 TiB");
        assert_eq!(human_bytes(u64::MAX), "16.00 EiB");
    }
}
