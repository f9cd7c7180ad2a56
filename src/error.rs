//! The protocol's error codes and the error a client request can end in.
//!
//! `ErrCode` is one-to-one with the `Response.Err` enum of `proto/doozer.proto`;
//! `ReplyError` is what the core hands back for a failed request, so the wire
//! codec is the only place that knows how an error becomes fields of a frame.

use std::fmt;

/// Error codes of the client protocol (reference §2.2, §2.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrCode {
    TagInUse = 1,
    UnknownVerb = 2,
    Readonly = 3,
    TooLate = 4,
    RevMismatch = 5,
    BadPath = 6,
    MissingArg = 7,
    Range = 8,
    NotDir = 20,
    IsDir = 21,
    NoEnt = 22,
    Other = 127,
}

impl ErrCode {
    pub const ALL: [ErrCode; 12] = [
        ErrCode::TagInUse,
        ErrCode::UnknownVerb,
        ErrCode::Readonly,
        ErrCode::TooLate,
        ErrCode::RevMismatch,
        ErrCode::BadPath,
        ErrCode::MissingArg,
        ErrCode::Range,
        ErrCode::NotDir,
        ErrCode::IsDir,
        ErrCode::NoEnt,
        ErrCode::Other,
    ];

    pub fn from_wire(code: i32) -> Option<ErrCode> {
        ErrCode::ALL.into_iter().find(|c| *c as i32 == code)
    }

    /// The name the Go client prints (`REV_MISMATCH`, `OTHER`, …).
    pub fn name(self) -> &'static str {
        match self {
            ErrCode::TagInUse => "TAG_IN_USE",
            ErrCode::UnknownVerb => "UNKNOWN_VERB",
            ErrCode::Readonly => "READONLY",
            ErrCode::TooLate => "TOO_LATE",
            ErrCode::RevMismatch => "REV_MISMATCH",
            ErrCode::BadPath => "BAD_PATH",
            ErrCode::MissingArg => "MISSING_ARG",
            ErrCode::Range => "RANGE",
            ErrCode::NotDir => "NOTDIR",
            ErrCode::IsDir => "ISDIR",
            ErrCode::NoEnt => "NOENT",
            ErrCode::Other => "OTHER",
        }
    }
}

impl fmt::Display for ErrCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A request's failure as the client sees it: a code and, for `OTHER` only, a
/// detail text (the original never sends a detail with any other code).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError {
    pub code: ErrCode,
    pub detail: Option<String>,
}

impl ReplyError {
    pub fn code(code: ErrCode) -> ReplyError {
        ReplyError { code, detail: None }
    }

    pub fn other(detail: impl Into<String>) -> ReplyError {
        ReplyError {
            code: ErrCode::Other,
            detail: Some(detail.into()),
        }
    }

    pub fn permission_denied() -> ReplyError {
        ReplyError::other("permission denied")
    }

    pub fn busy() -> ReplyError {
        ReplyError::other("busy")
    }

    pub fn value_too_large() -> ReplyError {
        ReplyError::other("value too large")
    }
}

impl From<ErrCode> for ReplyError {
    fn from(code: ErrCode) -> Self {
        ReplyError::code(code)
    }
}

impl fmt::Display for ReplyError {
    /// `NAME` or `NAME: detail`, as the Go client shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {}", self.code, detail),
            None => write!(f, "{}", self.code),
        }
    }
}

impl std::error::Error for ReplyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_print_like_go() {
        for code in ErrCode::ALL {
            assert_eq!(ErrCode::from_wire(code as i32), Some(code));
        }
        assert_eq!(ErrCode::from_wire(0), None);
        assert_eq!(
            ReplyError::permission_denied().to_string(),
            "OTHER: permission denied"
        );
        assert_eq!(
            ReplyError::code(ErrCode::RevMismatch).to_string(),
            "REV_MISMATCH"
        );
    }
}
