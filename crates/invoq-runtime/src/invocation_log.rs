//! The log of one invocation as Lambda frames it (START, the function's output, END, REPORT),
//! from which `X-Amz-Log-Type: Tail` returns the last 4 KB.

use std::time::Duration;

use invoq_domain::limits::LOG_TAIL_BYTES;

/// Output beyond this is dropped from the front: only the tail is ever returned.
const KEPT_BYTES: usize = 4 * LOG_TAIL_BYTES;

#[derive(Debug, Default)]
pub(crate) struct InvocationLog {
    text: String,
}

impl InvocationLog {
    pub(crate) fn push_output(&mut self, output: &str) {
        self.text.push_str(output);
        if self.text.len() > KEPT_BYTES {
            let cut = floor_char_boundary(&self.text, self.text.len() - LOG_TAIL_BYTES);
            self.text.drain(..cut);
        }
    }

    pub(crate) fn start(&mut self, request_id: &str, version: &str) {
        self.push_output(&format!(
            "START RequestId: {request_id} Version: {version}\n"
        ));
    }

    pub(crate) fn end(&mut self, request_id: &str, duration: Duration, report: &Report) {
        let millis = duration.as_secs_f64() * 1000.0;
        let billed = millis.ceil().max(1.0) as u64;
        let mut line = format!(
            "END RequestId: {request_id}\nREPORT RequestId: {request_id}\tDuration: {millis:.2} ms\t\
             Billed Duration: {billed} ms\tMemory Size: {} MB\t",
            report.memory_size_mb
        );
        if let Some(max_memory_used_mb) = report.max_memory_used_mb {
            line.push_str(&format!("Max Memory Used: {max_memory_used_mb} MB\t"));
        }
        if let Some(init_duration) = report.init_duration {
            line.push_str(&format!(
                "Init Duration: {:.2} ms\t",
                init_duration.as_secs_f64() * 1000.0
            ));
        }
        line.push('\n');
        self.push_output(&line);
    }

    /// The last 4 KB, cut at a character boundary.
    pub(crate) fn tail(&self) -> String {
        let start = self.text.len().saturating_sub(LOG_TAIL_BYTES);
        self.text[ceil_char_boundary(&self.text, start)..].to_owned()
    }

    pub(crate) fn take(&mut self) -> String {
        std::mem::take(&mut self.text)
    }
}

/// Figures for the REPORT line.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) memory_size_mb: u32,
    pub(crate) max_memory_used_mb: Option<u64>,
    pub(crate) init_duration: Option<Duration>,
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn ceil_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index += 1;
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_output_like_lambda() {
        let mut log = InvocationLog::default();
        log.start("id-1", "$LATEST");
        log.push_output("hello\n");
        log.end(
            "id-1",
            Duration::from_micros(1_500),
            &Report {
                memory_size_mb: 128,
                max_memory_used_mb: Some(12),
                init_duration: None,
            },
        );
        assert_eq!(
            log.tail(),
            "START RequestId: id-1 Version: $LATEST\nhello\nEND RequestId: id-1\n\
             REPORT RequestId: id-1\tDuration: 1.50 ms\tBilled Duration: 2 ms\t\
             Memory Size: 128 MB\tMax Memory Used: 12 MB\t\n"
        );
    }

    #[test]
    fn tail_is_the_last_4_kb_on_a_char_boundary() {
        let mut log = InvocationLog::default();
        for _ in 0..10_000 {
            log.push_output("é");
        }
        let tail = log.tail();
        assert!(tail.len() <= LOG_TAIL_BYTES && tail.len() >= LOG_TAIL_BYTES - 1);
        assert!(tail.chars().all(|c| c == 'é'));
    }
}
