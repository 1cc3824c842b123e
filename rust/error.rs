//! The one error type of the core, in pure Rust (no Python types here).
//!
//! Kernels return `CoreError` and never panic on user input; `lib.rs`, the only file that knows
//! Python, converts it into a `ValueError` (shape, parameter, value and layout problems) or a
//! `TypeError` (dtypes); an interrupt becomes the `KeyboardInterrupt` the signal handler raised.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// An argument has the wrong shape or size.
    Shape {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// An argument has an unsupported element type.
    DType {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A scalar parameter is out of range.
    Param {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// The data itself is invalid (NaN/Inf, labels out of range, ...).
    Value { arg: &'static str, message: String },
    /// The caller asked to stop (Ctrl-C seen between two pieces of work); nothing was returned.
    Interrupted,
}

impl CoreError {
    pub fn shape(arg: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Self::Shape {
            arg,
            expected: expected.into(),
            got: got.into(),
        }
    }
    pub fn param(arg: &'static str, expected: impl Into<String>, got: impl Into<String>) -> Self {
        Self::Param {
            arg,
            expected: expected.into(),
            got: got.into(),
        }
    }
    pub fn value(arg: &'static str, message: impl Into<String>) -> Self {
        Self::Value {
            arg,
            message: message.into(),
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shape { arg, expected, got } => {
                write!(f, "{arg}: expected shape {expected}, got {got}")
            }
            Self::DType { arg, expected, got } => {
                write!(f, "{arg}: expected dtype {expected}, got {got}")
            }
            Self::Param { arg, expected, got } => {
                write!(f, "{arg}: expected {expected}, got {got}")
            }
            Self::Value { arg, message } => write!(f, "{arg}: {message}"),
            Self::Interrupted => write!(f, "interrupted"),
        }
    }
}

impl std::error::Error for CoreError {}

pub type CoreResult<T> = Result<T, CoreError>;
