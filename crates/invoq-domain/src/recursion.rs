//! Recursive loop detection (Lambda's `RecursiveLoop`, lambda-spec.md §4): every invocation
//! belongs to a chain of events, counted the way Lambda counts it in the X-Ray trace
//! header's `Lineage` field. The 17th invocation of one chain is stopped unless the function
//! allows loops.
//!
//! invoq counts a chain across function destinations (an outcome's record invoking another
//! function) and across Invoke calls whose `X-Amzn-Trace-Id` carries a lineage, which is what
//! AWS SDKs send from inside a function: its `_X_AMZN_TRACE_ID` has the lineage invoq put there.

use serde::{Deserialize, Serialize};

/// Invocations one chain may make; the next one is stopped ("drops requests after
/// exceeding 16 invocations").
pub const MAX_CHAIN_INVOCATIONS: u32 = 16;

/// A function's recursive loop detection setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecursiveLoop {
    /// Loops run on.
    Allow,
    /// The invocation past [`MAX_CHAIN_INVOCATIONS`] is stopped (Lambda's default).
    #[default]
    Terminate,
}

impl RecursiveLoop {
    pub fn as_str(self) -> &'static str {
        match self {
            RecursiveLoop::Allow => "Allow",
            RecursiveLoop::Terminate => "Terminate",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "Allow" => Some(RecursiveLoop::Allow),
            "Terminate" => Some(RecursiveLoop::Terminate),
            _ => None,
        }
    }

    /// Whether an invocation that has `chain_depth` invocations of its chain before it must
    /// be stopped.
    pub fn stops(self, chain_depth: u32) -> bool {
        self == RecursiveLoop::Terminate && chain_depth >= MAX_CHAIN_INVOCATIONS
    }
}

/// The chain depth a trace header carries: the count at the end of its `Lineage` field
/// (`Lineage=<hash>:<count>`, or with a version in front), 0 without one.
pub fn chain_depth(trace_header: Option<&str>) -> u32 {
    trace_header
        .into_iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|field| field.trim().strip_prefix("Lineage="))
        .filter_map(|lineage| lineage.rsplit(':').next()?.parse::<u32>().ok())
        .max()
        .unwrap_or(0)
}

/// The trace header a function sees for an invocation at `chain_depth`: the caller's header
/// (or a new root) with `Lineage` set to count this invocation, so that calls the function
/// makes with an AWS SDK carry the chain on.
pub fn trace_header(caller: Option<&str>, request_id: &str, chain_depth: u32) -> String {
    let kept: Vec<&str> = caller
        .into_iter()
        .flat_map(|header| header.split(';'))
        .map(str::trim)
        .filter(|field| !field.is_empty() && !field.starts_with("Lineage="))
        .collect();
    let mut header = if kept.iter().any(|field| field.starts_with("Root=")) {
        kept.join(";")
    } else {
        // X-Ray's root format: version, 8 hex digits of time, 24 hex digits of id.
        let id: String = request_id.chars().filter(char::is_ascii_hexdigit).collect();
        let id = format!("{id:0<32}");
        let mut fields = vec![format!("Root=1-{}-{}", &id[..8], &id[8..32])];
        fields.extend(kept.iter().map(|field| field.to_string()));
        fields.join(";")
    };
    header.push_str(&format!(";Lineage=invoq:{}", chain_depth + 1));
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seventeenth_invocation_of_a_chain_is_stopped_unless_loops_are_allowed() {
        assert!(!RecursiveLoop::Terminate.stops(15));
        assert!(RecursiveLoop::Terminate.stops(16));
        assert!(!RecursiveLoop::Allow.stops(1_000));
    }

    #[test]
    fn lineage_counts_travel_through_trace_headers() {
        assert_eq!(chain_depth(None), 0);
        assert_eq!(chain_depth(Some("Root=1-abc-def;Sampled=0")), 0);
        assert_eq!(chain_depth(Some("Root=1-abc-def;Lineage=a87bd80c:3")), 3);
        assert_eq!(chain_depth(Some("Root=1-a-b;Lineage=1:a87bd80c:7")), 7);
        assert_eq!(chain_depth(Some("Lineage=x:not-a-number")), 0);

        let first = trace_header(None, "5f3c1e2a-0000-4000-8000-00000000abcd", 0);
        assert!(first.starts_with("Root=1-5f3c1e2a-"), "{first}");
        assert_eq!(chain_depth(Some(&first)), 1);
        let next = trace_header(Some(&first), "other", chain_depth(Some(&first)));
        assert_eq!(chain_depth(Some(&next)), 2);
        assert_eq!(next.matches("Lineage=").count(), 1);
        assert!(next.starts_with(first.split(';').next().unwrap()));
    }
}
