//! Hatchet's duration strings: a sequence of `<number><unit>` with units `ms`, `s`, `m`, `h`,
//! `d`, `w` (e.g. `"60s"`, `"1m"`, `"1h30m"`). An empty string means "use the default".

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: use a number and a unit (ms, s, m, h, d, w), e.g. \"60s\" or \"1h30m\"")]
pub struct InvalidDuration(pub String);

/// Parses a duration string; `Ok(None)` for an empty one.
pub fn parse(text: &str) -> Result<Option<Duration>, InvalidDuration> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || InvalidDuration(text.to_owned());
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            "w" => Duration::from_secs(604_800),
            _ => return Err(bad()),
        };
        total += unit.checked_mul(u32::try_from(value).map_err(|_| bad())?).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(Some(total))
}

/// Renders a duration the way the SDKs do (`"90s"`, `"5m"`).
pub fn render(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else if duration.subsec_millis() == 0 {
        format!("{secs}s")
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_sdks_send() {
        assert_eq!(parse("60s").unwrap(), Some(Duration::from_secs(60)));
        assert_eq!(parse("1m").unwrap(), Some(Duration::from_secs(60)));
        assert_eq!(parse("5m").unwrap(), Some(Duration::from_secs(300)));
        assert_eq!(parse("2h").unwrap(), Some(Duration::from_secs(7200)));
        assert_eq!(parse("1h30m").unwrap(), Some(Duration::from_secs(5400)));
        assert_eq!(parse("250ms").unwrap(), Some(Duration::from_millis(250)));
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["s", "10", "10x", "1.5m", "-5s", "m5"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renders_round_trip() {
        for d in
            [Duration::from_secs(90), Duration::from_secs(300), Duration::from_secs(7200), Duration::from_millis(1500)]
        {
            assert_eq!(parse(&render(d)).unwrap(), Some(d));
        }
    }
}
