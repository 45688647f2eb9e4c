//! Durations as Kubernetes components take them in flags: `6s`, `500ms`, `1m30s`.

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("{s:?} is not a duration such as 6s or 500ms: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations() {
        assert_eq!(parse("6s"), Ok(Duration::from_secs(6)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse("-1s").is_err());
        assert!(parse("soon").is_err());
    }
}
