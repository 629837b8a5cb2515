//! The request-head parser and placeholder substituter of intercepted
//! flows (`agentvm_net::intercept::http`): any guest plaintext, fed in
//! pieces whose sizes the first input byte picks. Never panics; the value
//! of a secret bound to another host never goes out; the output never
//! holds more than the input plus the substituted values; after an error
//! nothing more passes; the stream's own buffer stays bounded.
#![no_main]

use std::sync::{Arc, OnceLock};

use agentvm_net::intercept::http::{RequestStream, MAX_HEAD};
use agentvm_net::secrets::{Secret, SecretValue};
use libfuzzer_sys::fuzz_target;

const BOUND_VALUE: &str = "REAL-bound-value-0123";
const OTHER_VALUE: &str = "REAL-other-value-4567";

fn secrets() -> Arc<[Secret]> {
    static S: OnceLock<Arc<[Secret]>> = OnceLock::new();
    S.get_or_init(|| {
        vec![
            Secret {
                name: "BOUND".into(),
                placeholder: "ph-bound-AAAA".into(),
                value: SecretValue::new(BOUND_VALUE),
                hosts: vec!["api.test".into()],
            },
            Secret {
                name: "OTHER".into(),
                placeholder: "ph-other-BBBB".into(),
                value: SecretValue::new(OTHER_VALUE),
                hosts: vec!["other.test".into()],
            },
        ]
        .into()
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut stream = RequestStream::new("api.test", secrets());
    let (mut out, mut events) = (Vec::new(), Vec::new());
    let mut failed = false;
    for piece in input.chunks(step) {
        let before = out.len();
        let result = stream.push(piece, &mut out, &mut events);
        if failed {
            assert!(result.is_err());
            assert_eq!(out.len(), before, "bytes passed after an error");
        }
        failed |= result.is_err();
        assert!(stream.buffered() <= MAX_HEAD);
    }
    // The guest may type the value itself (it passes in a body); it never
    // comes from the stream.
    let other = OTHER_VALUE.as_bytes();
    let has = |b: &[u8]| b.windows(other.len()).any(|w| w == other);
    assert!(has(input) || !has(&out));
    let substitutions = out
        .windows(BOUND_VALUE.len())
        .filter(|w| *w == BOUND_VALUE.as_bytes())
        .count();
    assert!(out.len() <= input.len() + substitutions * BOUND_VALUE.len());
});
