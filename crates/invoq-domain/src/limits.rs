//! Lambda's quotas, as invoq enforces them (lambda-spec.md §1 and §7).

/// Largest synchronous request payload.
pub const SYNC_REQUEST_MAX_BYTES: usize = 6_291_456;
/// Largest synchronous response payload (6 MiB plus 100 bytes, as the Runtime API enforces).
pub const SYNC_RESPONSE_MAX_BYTES: usize = 6_291_556;
/// Largest decoded `X-Amz-Client-Context`.
pub const CLIENT_CONTEXT_MAX_BYTES: usize = 3_583;
/// How much of an invocation's log `X-Amz-Log-Type: Tail` returns.
pub const LOG_TAIL_BYTES: usize = 4_096;

pub const DEFAULT_TIMEOUT_SECONDS: u32 = 3;
pub const MAX_TIMEOUT_SECONDS: u32 = 900;
pub const DEFAULT_MEMORY_SIZE_MB: u32 = 128;
pub const MIN_MEMORY_SIZE_MB: u32 = 128;
pub const MAX_MEMORY_SIZE_MB: u32 = 10_240;
/// Environment variables, all names and values together.
pub const ENVIRONMENT_MAX_BYTES: usize = 4_096;

/// Concurrent executions an account may run in one region.
pub const ACCOUNT_CONCURRENCY: u32 = 1_000;
/// Concurrency that must stay unreserved for functions without a reservation.
pub const MIN_UNRESERVED_CONCURRENCY: u32 = 100;

/// How long a bootstrap may take to reach its first `/next` before invoq gives up (Lambda's
/// init phase limit); the function timeout starts counting only after that.
pub const INIT_TIMEOUT_SECONDS: u32 = 10;
