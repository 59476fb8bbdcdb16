//! Times as the daemon's records keep them (nanoseconds since the epoch)
//! and as its two APIs send them (the Task API's rust-protobuf timestamps,
//! the Sandbox Controller's prost ones).

use std::time::{Duration, SystemTime};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;

/// A time as nanoseconds since the epoch (the daemon's records and the
/// keeper's messages keep times this way).
pub fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The inverse of [`nanos`].
pub fn from_nanos(n: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(n)
}

/// A time in the Task API's (rust-protobuf) form.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// A time in the Sandbox Controller's (prost) form.
pub fn prost_timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_agree() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(from_nanos(nanos(t)), t);
        let (a, b) = (timestamp(t), prost_timestamp(t));
        assert_eq!((a.seconds, a.nanos), (b.seconds, b.nanos));
        assert_eq!((a.seconds, a.nanos), (1_700_000_000, 123_456_789));
    }
}
