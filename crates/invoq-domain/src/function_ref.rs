//! Every way a caller may name a function (lambda-spec.md §1): `name`, `name:QUALIFIER`,
//! `arn:aws:lambda:REGION:ACCOUNT:function:name[:QUALIFIER]` and
//! `ACCOUNT:function:name[:QUALIFIER]`, combined with an optional `Qualifier` parameter.

use std::fmt;

use crate::{ApiError, LATEST};

/// A version or alias of a function.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Qualifier {
    Latest,
    Version(u64),
    Alias(String),
}

impl Qualifier {
    /// Parses a qualifier as Lambda accepts it: `$LATEST`, digits, or an alias name.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        if text == LATEST {
            return Ok(Qualifier::Latest);
        }
        if !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(Qualifier::Version)
                .map_err(|_| qualifier_validation_error(text));
        }
        let is_alias_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if !text.is_empty() && text.len() <= 128 && text.chars().all(is_alias_char) {
            return Ok(Qualifier::Alias(text.to_owned()));
        }
        Err(qualifier_validation_error(text))
    }
}

impl fmt::Display for Qualifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Qualifier::Latest => f.write_str(LATEST),
            Qualifier::Version(version) => write!(f, "{version}"),
            Qualifier::Alias(alias) => f.write_str(alias),
        }
    }
}

fn qualifier_validation_error(text: &str) -> ApiError {
    ApiError::validation(
        text,
        "qualifier",
        "Member must satisfy regular expression pattern: (|[a-zA-Z0-9$_-]+)",
    )
}

/// A parsed function reference: the bare name and the qualifier, if the caller gave one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionRef {
    pub name: String,
    pub qualifier: Option<Qualifier>,
}

impl FunctionRef {
    /// Parses a `FunctionName` path label (already percent-decoded) and merges it with the
    /// `Qualifier` query parameter.
    pub fn parse(function_name: &str, qualifier_param: Option<&str>) -> Result<Self, ApiError> {
        let invalid = || {
            ApiError::validation(
                function_name,
                "functionName",
                "Member must satisfy regular expression pattern: \
                 (arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\\d{1}:)?(\\d{12}:)?\
                 (function:)?([a-zA-Z0-9-_]+)(:(\\$LATEST|[a-zA-Z0-9-_]+))?",
            )
        };
        if function_name.is_empty() || function_name.len() > 256 {
            return Err(invalid());
        }
        let parts: Vec<&str> = function_name.split(':').collect();
        let (name, qualifier_in_name) = match parts.as_slice() {
            [name] => (*name, None),
            [name, qualifier] => (*name, Some(*qualifier)),
            [account, "function", name] if is_account_id(account) => (*name, None),
            [account, "function", name, qualifier] if is_account_id(account) => {
                (*name, Some(*qualifier))
            }
            [
                "arn",
                partition,
                "lambda",
                _region,
                account,
                "function",
                name,
            ] if partition.starts_with("aws") && is_account_id(account) => (*name, None),
            [
                "arn",
                partition,
                "lambda",
                _region,
                account,
                "function",
                name,
                qualifier,
            ] if partition.starts_with("aws") && is_account_id(account) => {
                (*name, Some(*qualifier))
            }
            _ => return Err(invalid()),
        };
        if !is_valid_name(name) {
            return Err(invalid());
        }
        let qualifier_in_name = qualifier_in_name.map(Qualifier::parse).transpose()?;
        let qualifier_param = qualifier_param
            .filter(|q| !q.is_empty())
            .map(Qualifier::parse)
            .transpose()?;
        let qualifier = match (qualifier_in_name, qualifier_param) {
            (Some(from_name), Some(from_param)) if from_name != from_param => {
                return Err(ApiError::invalid_parameter(
                    "The derived qualifier from the function name does not match the specified \
                     qualifier.",
                ));
            }
            (from_name, from_param) => from_name.or(from_param),
        };
        Ok(FunctionRef {
            name: name.to_owned(),
            qualifier,
        })
    }

    /// The qualifier, `$LATEST` when none was given.
    pub fn qualifier_or_latest(&self) -> Qualifier {
        self.qualifier.clone().unwrap_or(Qualifier::Latest)
    }
}

fn is_account_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Function names: 1-64 characters of letters, digits, hyphens and underscores.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    fn parse(name: &str, qualifier: Option<&str>) -> Result<FunctionRef, ApiError> {
        FunctionRef::parse(name, qualifier)
    }

    #[test]
    fn accepts_every_name_form() {
        let plain = FunctionRef {
            name: "orders".into(),
            qualifier: None,
        };
        let latest = FunctionRef {
            name: "orders".into(),
            qualifier: Some(Qualifier::Latest),
        };
        assert_eq!(parse("orders", None).unwrap(), plain);
        assert_eq!(parse("orders:$LATEST", None).unwrap(), latest);
        assert_eq!(parse("123456789012:function:orders", None).unwrap(), plain);
        assert_eq!(
            parse("123456789012:function:orders:$LATEST", None).unwrap(),
            latest
        );
        assert_eq!(
            parse(
                "arn:aws:lambda:us-east-1:000000000000:function:orders",
                None
            )
            .unwrap(),
            plain
        );
        assert_eq!(
            parse(
                "arn:aws:lambda:eu-west-1:000000000000:function:orders:7",
                None
            )
            .unwrap(),
            FunctionRef {
                name: "orders".into(),
                qualifier: Some(Qualifier::Version(7))
            }
        );
        assert_eq!(
            parse("orders", Some("live")).unwrap(),
            FunctionRef {
                name: "orders".into(),
                qualifier: Some(Qualifier::Alias("live".into()))
            }
        );
        assert_eq!(parse("orders:$LATEST", Some("$LATEST")).unwrap(), latest);
    }

    #[test]
    fn rejects_a_qualifier_conflict_with_aws_text() {
        let error = parse("orders:1", Some("2")).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidParameterValue);
        assert_eq!(
            error.message,
            "The derived qualifier from the function name does not match the specified qualifier."
        );
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "",
            "has space",
            "a:b:c",
            "arn:aws:s3:::bucket",
            &"x".repeat(65),
        ] {
            let error = parse(bad, None).unwrap_err();
            assert_eq!(error.code, ErrorCode::Validation, "{bad}");
        }
        assert_eq!(
            parse("orders", Some("bad qualifier")).unwrap_err().code,
            ErrorCode::Validation
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_function_name_and_qualifier_parse_or_fail_cleanly(
            name in "\\PC{0,200}",
            qualifier in proptest::option::of("\\PC{0,140}"),
        ) {
            let _ = FunctionRef::parse(&name, qualifier.as_deref());
        }

        #[test]
        fn arn_shaped_names_parse_or_fail_cleanly(
            region in "[a-z0-9-]{0,14}",
            account in "[0-9]{0,13}",
            rest in "[a-zA-Z0-9_:$-]{0,80}",
        ) {
            let name = format!("arn:aws:lambda:{region}:{account}:function:{rest}");
            if let Ok(function) = FunctionRef::parse(&name, None) {
                prop_assert!(is_valid_name(&function.name));
            }
        }
    }
}
