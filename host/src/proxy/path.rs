//! Request path normalisation, so that routing, plugins and the upstream
//! all see one path: `/a/./b/../c` and `/a/%2e%2e/c` cannot route as one
//! thing and reach the backend as another.
//!
//! In order: percent-encodings of unreserved characters are decoded
//! (`%41` → `A`, `%2e` → `.`) and other encodings upper-cased (RFC 3986
//! §6.2.2); `%2F` is kept, refused or decoded per
//! [`EncodedSlash`]; `%00`, raw control characters and backslashes are
//! refused; dot segments are removed (§5.2.4), and one that climbs above
//! the root is refused; `//` is merged when configured. The query is left
//! as it is.

use std::borrow::Cow;

use crate::config::{EncodedSlash, PathPolicy};

/// Why a path was refused (the client gets 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path.
    #[error("the path does not start with /")]
    NotAbsolute,
    /// A `..` segment would climb above `/`.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// `%2F` with `encoded_slash = "reject"`.
    #[error("the path contains an encoded slash")]
    EncodedSlash,
    /// `%00`, a control character, a backslash, or a broken `%` escape.
    #[error("the path contains {0}")]
    Forbidden(&'static str),
    /// A `..` segment in a path a rewrite plugin produced.
    #[error("the rewritten path contains a .. segment")]
    DotDotAfterRewrite,
}

/// The normalised form of `path` (no query), borrowed when already normal.
pub fn normalize<'a>(path: &'a str, policy: &PathPolicy) -> Result<Cow<'a, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    if is_normal(bytes, policy.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode(bytes, policy.encoded_slash)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    // Whether the result ends with `/` (a trailing `.`/`..` or empty segment).
    let mut trailing = false;
    for (i, segment) in segments.iter().enumerate() {
        trailing = false;
        match *segment {
            "." => trailing = true,
            ".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing = true;
            }
            "" if policy.merge_slashes || i == last => trailing = true,
            s => out.push(s),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if trailing || normal.is_empty() {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// The common case, in one pass over the bytes (every request comes
/// here): nothing to decode or refuse, no dot segment, and no empty segment
/// to merge.
fn is_normal(path: &[u8], merge_slashes: bool) -> bool {
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' | 0..0x20 | 0x7f => return false,
            b'/' => match &path[i + 1..] {
                [b'/', ..] if merge_slashes => return false,
                [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..] => return false,
                _ => {}
            },
            _ => {}
        }
    }
    true
}

/// Checks a path a rewrite plugin produced and normalises it: a `..`
/// segment there is refused outright (a plugin that builds paths from
/// client input must not let it climb out of where it points).
pub fn normalize_rewritten<'a>(path: &'a str, policy: &PathPolicy) -> Result<Cow<'a, str>, PathError> {
    let dot_dot = |p: &str| p.split('/').any(|s| s == "..");
    // Without an escape or a refused byte, decoding would give the path
    // back unchanged: look for `..` in it without making that copy.
    let verbatim = path.bytes().all(|b| b != b'%' && b != b'\\' && b >= 0x20 && b != 0x7f);
    let climbs = if verbatim {
        dot_dot(path)
    } else {
        dot_dot(&decode(path.as_bytes(), EncodedSlash::Decode)?)
    };
    if climbs {
        return Err(PathError::DotDotAfterRewrite);
    }
    normalize(path, policy)
}

/// Percent-decodes unreserved characters (and `%2F` when asked), upper-
/// cases the other escapes, and refuses what must not be in a path.
fn decode(bytes: &[u8], slash: EncodedSlash) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::Forbidden("a broken % escape"))?;
                match hex {
                    0 => return Err(PathError::Forbidden("%00")),
                    b'/' => match slash {
                        EncodedSlash::Keep => out.push_str("%2F"),
                        EncodedSlash::Reject => return Err(PathError::EncodedSlash),
                        EncodedSlash::Decode => out.push('/'),
                    },
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => out.push(char::from(c)),
                    c => {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(c >> 4)]));
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(c & 15)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Forbidden("a backslash")),
            c if c < 0x20 || c == 0x7f => return Err(PathError::Forbidden("a control character")),
            _ => {
                // Everything else was already checked by the URI parser;
                // copy it through (multi-byte UTF-8 included).
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b'%' | b'\\') && bytes[i] >= 0x20 && bytes[i] != 0x7f {
                    i += 1;
                }
                out.push_str(&String::from_utf8_lossy(&bytes[start..i]));
                continue;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path, &PathPolicy::default()).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/a/b").unwrap(), "/a/b");
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/a//b///c/").unwrap(), "/a/b/c/");
        assert_eq!(n("/a/").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(n("/a/../../etc/passwd").unwrap_err(), PathError::AboveRoot);
        let keep = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        assert_eq!(normalize("/a//b", &keep).unwrap(), "/a//b");
    }

    #[test]
    fn encodings() {
        assert_eq!(n("/%61%62c").unwrap(), "/abc");
        assert_eq!(n("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(n("/a/%2E%2e/%2e%2E/x").unwrap_err(), PathError::AboveRoot);
        assert_eq!(n("/a/.%2e/b").unwrap(), "/b");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(n("/a%00b").unwrap_err(), PathError::Forbidden("%00"));
        assert_eq!(n("/a%zz").unwrap_err(), PathError::Forbidden("a broken % escape"));
        assert_eq!(n("/a%2").unwrap_err(), PathError::Forbidden("a broken % escape"));
        assert_eq!(n("/a\\b").unwrap_err(), PathError::Forbidden("a backslash"));
        let reject = PathPolicy {
            encoded_slash: EncodedSlash::Reject,
            ..PathPolicy::default()
        };
        assert_eq!(normalize("/a%2Fb", &reject).unwrap_err(), PathError::EncodedSlash);
        let decode = PathPolicy {
            encoded_slash: EncodedSlash::Decode,
            ..PathPolicy::default()
        };
        assert_eq!(normalize("/a%2F..%2Fb", &decode).unwrap(), "/b");
        // Kept encoded, %2F is not a separator: no traversal through it.
        assert_eq!(n("/a/..%2F..%2Fetc").unwrap(), "/a/..%2F..%2Fetc");
    }

    #[test]
    fn rewritten_paths_may_not_climb() {
        let p = PathPolicy::default();
        assert_eq!(normalize_rewritten("/x/y", &p).unwrap(), "/x/y");
        // Plain and escaped, inside and at the end.
        for climbing in ["/x/../y", "/x/%2e%2e/y", "/x/..", "/x/.%2e"] {
            assert_eq!(
                normalize_rewritten(climbing, &p).unwrap_err(),
                PathError::DotDotAfterRewrite,
                "{climbing}"
            );
        }
        assert!(matches!(
            normalize_rewritten("/x\\..", &p).unwrap_err(),
            PathError::Forbidden(_)
        ));
        // A plain rewritten path is neither copied nor changed.
        assert!(matches!(
            normalize_rewritten("/x/y..z", &p),
            Ok(Cow::Borrowed("/x/y..z"))
        ));
    }

    /// `is_normal` against the plain statement of what it checks, over
    /// every path of up to 7 bytes made of the bytes that matter.
    #[test]
    fn is_normal_agrees_with_its_definition() {
        fn by_definition(path: &str, merge: bool) -> bool {
            !(path.bytes().any(|b| b == b'%' || b == b'\\' || b < 0x20 || b == 0x7f)
                || path.contains("/./")
                || path.contains("/../")
                || path.ends_with("/.")
                || path.ends_with("/..")
                || (merge && path.contains("//")))
        }
        let alphabet = ["/", ".", "a", "%", "\\", "\t"];
        let mut paths = vec![String::from("/")];
        let mut all = paths.clone();
        for _ in 0..6 {
            paths = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            all.extend(paths.iter().cloned());
        }
        for path in &all {
            for merge in [false, true] {
                assert_eq!(
                    is_normal(path.as_bytes(), merge),
                    by_definition(path, merge),
                    "{path:?} {merge}"
                );
            }
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(
            normalize("/api/users/42", &PathPolicy::default()),
            Ok(Cow::Borrowed(_))
        ));
    }
}
