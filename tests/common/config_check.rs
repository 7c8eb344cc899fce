//! Parsing a config text the way the config-contract tests do (as `t.toml`, no gateway):
//! shared by every test file that checks keys, defaults or rejections (`#[path]`-included).

#![allow(dead_code)]

use ringgate::config::{self, Config, ConfigError};

/// `text` parsed as `t.toml`; panics with the reason if it is refused.
pub fn parse(text: &str) -> Config {
    match config::parse(text, "t.toml") {
        Ok(config) => config,
        Err(e) => panic!("expected a valid config, got: {e}\n{text}"),
    }
}

/// (line, column, key, message) of the refusal of `text`, which must name `t.toml`.
pub fn reject(text: &str) -> (usize, usize, String, String) {
    match config::parse(text, "t.toml") {
        Err(ConfigError::Invalid {
            origin,
            line,
            column,
            key,
            message,
        }) => {
            assert_eq!(origin, "t.toml");
            (line, column, key, message)
        }
        other => panic!("expected a rejection, got {other:?}\n{text}"),
    }
}

/// Asserts that `text` is refused at `line`:`column` under `key`, with a message containing
/// `message_part`.
pub fn assert_rejects(text: &str, line: usize, column: usize, key: &str, message_part: &str) {
    let (l, c, k, message) = reject(text);
    assert_eq!(
        (l, c, k.as_str()),
        (line, column, key),
        "position or key of: {message}\n{text}"
    );
    assert!(
        message.contains(message_part),
        "message {message:?} lacks {message_part:?}"
    );
}
