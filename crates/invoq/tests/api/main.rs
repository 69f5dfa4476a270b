//! Integration tests: the real `invoq` binary, driven by the official aws-sdk-lambda client
//! and raw HTTP. One test binary, so the SDK is linked once.

mod adapters;
mod asynchronous;
mod bench;
mod chaos;
mod control_plane;
mod destinations;
mod event_sources;
mod exposure;
mod harness;
mod invoke;
mod isolation;
mod managed_runtimes;
mod recovery;
mod recursion;
mod runtimes;
mod scale_out;
mod split;
