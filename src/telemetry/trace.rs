//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) for AMQP messages.
//!
//! An inbound delivery's `traceparent` header (and `tracestate`) is parsed and validated
//! here; a malformed value is ignored, as the specification asks, and the delivery then starts
//! a new trace like one without the header. bodflow's processing of the delivery is a span of
//! that trace with a new span id ([`TraceContext::child`]); every outbound message derived
//! from the delivery carries `traceparent` = same trace id, bodflow's span id as parent id,
//! the inbound trace flags — so downstream systems correlate their work with the sender's.
//!
//! Ids come from `fastrand` (not cryptographic: trace ids only need to be unique, and the
//! specification asks for randomness, not secrecy).

use std::fmt;

/// Longest `tracestate` passed on; the specification asks to propagate at least 512
/// characters and allows dropping a longer one.
pub const MAX_TRACESTATE: usize = 512;

/// One position in a distributed trace: trace id, parent (span) id, flags, vendor state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The span id: for a parsed header the caller's span, for [`TraceContext::child`] ours.
    pub span_id: u64,
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
    /// `tracestate`, passed on unchanged.
    pub state: Option<String>,
}

/// Why a `traceparent` was ignored (stable codes for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    #[error("not version-traceid-parentid-flags of the right lengths")]
    Shape,
    #[error("not lowercase hexadecimal")]
    Hex,
    #[error("version ff is forbidden")]
    Version,
    #[error("all-zero trace id or parent id")]
    Zero,
}

impl TraceparentError {
    pub fn code(self) -> &'static str {
        match self {
            TraceparentError::Shape => "shape",
            TraceparentError::Hex => "hex",
            TraceparentError::Version => "version",
            TraceparentError::Zero => "zero_id",
        }
    }
}

fn hex(s: &str) -> Result<u128, TraceparentError> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(TraceparentError::Hex);
    }
    u128::from_str_radix(s, 16).map_err(|_| TraceparentError::Hex)
}

impl TraceContext {
    /// Parses a `traceparent` value (and keeps `tracestate` when it is printable ASCII of at
    /// most [`MAX_TRACESTATE`] characters). Version `00` must be exactly 55 characters; a
    /// later version may append `-` and more fields, which are ignored (forward
    /// compatibility, as the specification asks).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, TraceparentError> {
        let value = traceparent.trim();
        let head = value.get(..55).ok_or(TraceparentError::Shape)?;
        let mut parts = head.split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TraceparentError::Shape);
        };
        if version.len() != 2 || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return Err(TraceparentError::Shape);
        }
        let version = hex(version)?;
        if version == 0xff {
            return Err(TraceparentError::Version);
        }
        let rest = value.get(55..).unwrap_or_default();
        if (version == 0 && !rest.is_empty()) || (!rest.is_empty() && !rest.starts_with('-')) {
            return Err(TraceparentError::Shape);
        }
        let trace_id = hex(trace)?;
        let span_id = u64::try_from(hex(parent)?).map_err(|_| TraceparentError::Hex)?;
        let flags = u8::try_from(hex(flags)?).map_err(|_| TraceparentError::Hex)?;
        if trace_id == 0 || span_id == 0 {
            return Err(TraceparentError::Zero);
        }
        let state = tracestate
            .map(str::trim)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_TRACESTATE
                    && s.bytes().all(|b| (b' '..=b'~').contains(&b))
            })
            .map(str::to_string);
        Ok(TraceContext {
            trace_id,
            span_id,
            flags,
            state,
        })
    }

    /// A new trace (no usable inbound context): random trace and span ids, sampled.
    pub fn root() -> Self {
        TraceContext {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            flags: 0x01,
            state: None,
        }
    }

    /// The same trace with a new span id: our span, parent of what we send.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: nonzero_u64(),
            ..self.clone()
        }
    }

    /// The `traceparent` header value (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The trace id as 32 hex digits (span field, log correlation).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

fn nonzero_u128() -> u128 {
    loop {
        let v = fastrand::u128(..);
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_parses_and_formats_back() {
        let t = TraceContext::parse(VALID, Some("rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(t.flags, 1);
        assert_eq!(t.state.as_deref(), Some("rojo=00f067aa0ba902b7"));
        assert_eq!(t.traceparent(), VALID);
    }

    #[test]
    fn a_child_keeps_trace_flags_and_state_with_a_new_span_id() {
        let t = TraceContext::parse(VALID, Some("congo=t61rcWkgMzE")).unwrap();
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_eq!(c.flags, t.flags);
        assert_eq!(c.state, t.state);
        assert_ne!(c.span_id, t.span_id);
        assert_ne!(c.span_id, 0);
        let back = TraceContext::parse(&c.traceparent(), None).unwrap();
        assert_eq!(back.trace_id, t.trace_id);
        assert_eq!(back.span_id, c.span_id);
    }

    #[test]
    fn malformed_values_are_refused_with_a_code() {
        for (value, code) in [
            ("", "shape"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "shape",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "shape",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "hex",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
                "hex",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "zero_id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "zero_id",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "shape",
            ),
            (
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "hex",
            ),
            (
                "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
                "shape",
            ),
        ] {
            let err = TraceContext::parse(value, None).unwrap_err();
            assert_eq!(err.code(), code, "{value:?}: {err}");
        }
    }

    #[test]
    fn later_versions_may_append_fields() {
        let t = TraceContext::parse(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds",
            None,
        )
        .unwrap();
        assert_eq!(t.flags, 9);
        // We answer in the version we know.
        assert!(t.child().traceparent().starts_with("00-4bf92f"));
        assert!(TraceContext::parse(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09x",
            None
        )
        .is_err());
    }

    #[test]
    fn unusable_tracestate_is_dropped_not_the_traceparent() {
        let long = "a=".to_string() + &"b".repeat(MAX_TRACESTATE);
        for state in [long.as_str(), "x=\u{7f}", "   "] {
            let t = TraceContext::parse(VALID, Some(state)).unwrap();
            assert_eq!(t.state, None, "{state:?}");
        }
    }

    #[test]
    fn a_root_is_valid_and_sampled() {
        let r = TraceContext::root();
        let back = TraceContext::parse(&r.traceparent(), None).unwrap();
        assert_eq!(back, r);
        assert_eq!(r.flags & 1, 1);
        assert_ne!(TraceContext::root().trace_id, r.trace_id);
    }
}
