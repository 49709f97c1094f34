//! What the PostgreSQL adapter's failures mean for the store's callers:
//! the port error for a diesel error, and which statement errors are data
//! the database will never store.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use relay_ports::{Cause, StoreError};

/// A statement that did not run: nothing was written.
pub(super) fn unavailable(e: DieselError) -> StoreError {
    StoreError::Unavailable(Cause::new(e))
}

/// Something the database returned that cannot be right.
pub(super) fn corrupt(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt(Cause::new(e))
}

/// Something the database returned that cannot be right, found by us.
pub(super) fn corrupt_msg(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(Cause::msg(what))
}

/// What a failed statement means.
pub(super) enum Class {
    Duplicate,
    Data,
    Refused,
    Unknown,
}

/// What a failed statement means. A server-reported error rolled the
/// statement back (nothing written): a data error if the message says the
/// data cannot be stored, otherwise a refusal to retry later. An error
/// without a server answer (the connection broke, a row could not be read
/// back) leaves the outcome unknown.
pub(super) fn classify(e: &DieselError) -> Class {
    match e {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => Class::Duplicate,
        DieselError::DatabaseError(
            DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::ForeignKeyViolation,
            _,
        ) => Class::Data,
        DieselError::DatabaseError(
            DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
            _,
        ) => Class::Unknown,
        DieselError::DatabaseError(_, info) if is_data_error(info.message()) => Class::Data,
        DieselError::DatabaseError(..) => Class::Refused,
        _ => Class::Unknown,
    }
}

/// PostgreSQL's messages for data it cannot store (SQLSTATE classes 22 and
/// 54, which diesel does not pass on as codes).
fn is_data_error(message: &str) -> bool {
    const DATA: &[&str] = &[
        "invalid byte sequence",
        "unsupported Unicode escape sequence",
        "null character not permitted",
        "invalid input syntax",
        "value too long",
        "out of range",
        "numeric field overflow",
        "character with byte sequence",
        "row is too big",
        "index row size",
        "exceeds the maximum",
        "cannot be converted",
    ];
    DATA.iter().any(|d| message.contains(d))
}

#[cfg(test)]
mod tests {
    use super::is_data_error;

    #[test]
    fn data_errors_are_told_from_other_refusals() {
        assert!(is_data_error("unsupported Unicode escape sequence"));
        assert!(is_data_error(
            "invalid byte sequence for encoding \"UTF8\": 0x00"
        ));
        assert!(!is_data_error(
            "canceling statement due to statement timeout"
        ));
        assert!(!is_data_error("deadlock detected"));
        assert!(!is_data_error(
            "terminating connection due to administrator command"
        ));
    }
}
