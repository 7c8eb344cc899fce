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
