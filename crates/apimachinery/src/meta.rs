//! Object metadata helpers on JSON: generateName, generation bumps, RFC 3339 timestamps.

use std::time::SystemTime;

use serde_json::Value;

/// The characters Kubernetes draws generateName suffixes from (no vowels, no look-alikes).
pub const NAME_SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Length of the random suffix.
pub const NAME_SUFFIX_LEN: usize = 5;
/// A generated name's prefix is cut to this, so the name fits 63 characters.
pub const MAX_GENERATED_PREFIX: usize = 63 - NAME_SUFFIX_LEN;

/// Errors of this module.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The text is not an RFC 3339 timestamp.
    #[error("invalid timestamp {0:?}: expected RFC 3339 such as 2024-01-02T03:04:05Z")]
    Timestamp(String),
}

/// `generateName` + 5 random characters, with the prefix cut to 58 bytes (Kubernetes'
/// `SimpleNameGenerator`). Randomness comes from the OS.
pub fn generate_name(prefix: &str) -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let mut i = 0;
    generate_name_with(prefix, || {
        // The v4 version/variant bits live in bytes 6 and 8: skip them.
        while i == 6 || i == 8 {
            i += 1;
        }
        let b = bytes[i % bytes.len()];
        i += 1;
        u32::from(b)
    })
}

/// As [`generate_name`] with a caller-supplied random source (one call per character).
pub fn generate_name_with(prefix: &str, mut random: impl FnMut() -> u32) -> String {
    let mut cut = prefix.len().min(MAX_GENERATED_PREFIX);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut name = prefix[..cut].to_owned();
    for _ in 0..NAME_SUFFIX_LEN {
        let idx = random() as usize % NAME_SUFFIX_ALPHABET.len();
        name.push(char::from(NAME_SUFFIX_ALPHABET[idx]));
    }
    name
}

/// Whether an update changes anything the generation counts: everything outside `metadata`,
/// and outside `status` when the resource has a status subresource (Kubernetes' custom resource
/// strategy; core kinds behave the same for spec).
pub fn generation_changes(old: &Value, new: &Value, status_subresource: bool) -> bool {
    let counted = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            if status_subresource {
                m.remove("status");
            }
        }
        v
    };
    counted(old) != counted(new)
}

/// The generation an update should store: old + 1 when [`generation_changes`], else old.
pub fn next_generation(old: &Value, new: &Value, status_subresource: bool) -> i64 {
    let current = old["metadata"]["generation"].as_i64().unwrap_or(0);
    if generation_changes(old, new, status_subresource) {
        current + 1
    } else {
        current
    }
}

/// RFC 3339 in UTC with second precision, as `metav1.Time` serialises: `2024-01-02T03:04:05Z`.
pub fn format_time(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => "1970-01-01T00:00:00Z".to_owned(),
    }
}

/// The current time as [`format_time`] writes it.
pub fn now() -> String {
    format_time(SystemTime::now())
}

/// RFC 3339 with microseconds, as `metav1.MicroTime` serialises (Events, Leases).
pub fn format_micro_time(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string(),
        Err(_) => "1970-01-01T00:00:00.000000Z".to_owned(),
    }
}

/// Parses an RFC 3339 timestamp with any offset and optional fraction.
pub fn parse_time(s: &str) -> Result<SystemTime, MetaError> {
    let ts: jiff::Timestamp = s.parse().map_err(|_| MetaError::Timestamp(s.to_owned()))?;
    Ok(SystemTime::from(ts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn generated_names_use_the_kubernetes_alphabet() {
        for _ in 0..50 {
            let n = generate_name("vm-");
            assert_eq!(n.len(), 8);
            assert!(n.starts_with("vm-"));
            assert!(
                n[3..].bytes().all(|b| NAME_SUFFIX_ALPHABET.contains(&b)),
                "{n}"
            );
        }
        assert_ne!(generate_name("x"), generate_name("x"));
    }

    #[test]
    fn generated_name_is_deterministic_with_a_source() {
        let mut seq = [0u32, 1, 26, 27, 53].into_iter();
        assert_eq!(generate_name_with("a-", || seq.next().unwrap()), "a-bc9b9");
    }

    #[test]
    fn long_prefix_is_cut_to_fit_63() {
        let n = generate_name(&"p".repeat(80));
        assert_eq!(n.len(), 63);
        assert!(n.starts_with(&"p".repeat(58)));
    }

    #[test]
    fn generation_table() {
        let base = json!({"metadata": {"generation": 3, "labels": {"a": "b"}}, "spec": {"x": 1}, "status": {"p": "A"}});
        let cases = [
            (
                json!({"metadata": {"generation": 3, "labels": {"a": "c"}}, "spec": {"x": 1}, "status": {"p": "A"}}),
                true,
                3,
            ),
            (
                json!({"metadata": {"generation": 3}, "spec": {"x": 2}, "status": {"p": "A"}}),
                true,
                4,
            ),
            (
                json!({"metadata": {"generation": 3}, "spec": {"x": 1}, "status": {"p": "B"}}),
                true,
                3,
            ),
            (
                json!({"metadata": {"generation": 3}, "spec": {"x": 1}, "status": {"p": "B"}}),
                false,
                4,
            ),
            (
                json!({"metadata": {"generation": 3}, "spec": {"x": 1}, "status": {"p": "A"}, "extra": 1}),
                true,
                4,
            ),
        ];
        for (new, status_sub, want) in cases {
            assert_eq!(next_generation(&base, &new, status_sub), want, "{new}");
        }
    }

    #[test]
    fn timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(format_time(t), "2023-11-14T22:13:20Z");
        assert_eq!(format_micro_time(t), "2023-11-14T22:13:20.123000Z");
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00").unwrap(),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)
        );
        assert!(
            parse_time("yesterday")
                .unwrap_err()
                .to_string()
                .contains("\"yesterday\"")
        );
    }
}
