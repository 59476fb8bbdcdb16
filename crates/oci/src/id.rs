use thiserror::Error;

/// Why a container id was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("container id must not be empty")]
    Empty,
    #[error("invalid container id {0:?}: \".\" and \"..\" are not allowed")]
    Dots(String),
    #[error("invalid container id {id:?}: character {ch:?} is not allowed (use letters, digits, '_', '+', '-', '.')")]
    BadChar { id: String, ch: char },
    #[error("invalid container id: longer than 1024 bytes")]
    TooLong,
}

/// Checks a container id the way runc does (`^[\w+-\.]+$`): the id names a
/// directory under the state root, so `/`, `..` and control characters must
/// never reach the file system.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id == "." || id == ".." {
        return Err(IdError::Dots(id.to_string()));
    }
    if id.len() > 1024 {
        return Err(IdError::TooLong);
    }
    if let Some(ch) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.')))
    {
        return Err(IdError::BadChar {
            id: id.to_string(),
            ch,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_runc_style_ids() {
        for id in ["a", "abc-123", "x.y", "A_b+c", "0123456789abcdef"] {
            assert_eq!(validate_id(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn refuses_path_tricks() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(validate_id(".."), Err(IdError::Dots("..".into())));
        assert_eq!(validate_id("."), Err(IdError::Dots(".".into())));
        assert!(matches!(
            validate_id("a/b"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            validate_id("../x"),
            Err(IdError::BadChar { ch: '/', .. })
        ));
        assert!(matches!(
            validate_id("a b"),
            Err(IdError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(validate_id("a\nb"), Err(IdError::BadChar { .. })));
        assert_eq!(validate_id(&"a".repeat(1025)), Err(IdError::TooLong));
    }
}
