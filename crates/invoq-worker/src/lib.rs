//! invoq-worker will be the retry worker of asynchronous invocation (lambda-spec.md §2): it
//! leases invocations from `invoq-queue`, runs them through `invoq-runtime`, and settles each
//! attempt by Lambda's rules: retry function errors up to `MaximumRetryAttempts` after about
//! 60 s and 120 s, back off on throttles and system errors until `MaximumEventAgeInSeconds`,
//! and hand every terminal outcome (Success, RetriesExhausted, EventAgeExceeded,
//! ZeroReservedConcurrency) to the deliveries queue in one step with the lease.
//!
//! Nothing is implemented yet, and nothing pretends to be: the frontend refuses Event
//! invokes until this crate and the queue exist.
//!
//! Boundary: talks to the queue and the runtime through their service traits only.
