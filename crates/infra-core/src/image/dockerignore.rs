//! `.dockerignore` with Docker's semantics (moby's `patternmatcher`), not
//! gitignore's:
//!
//! - patterns are cleaned like Go's `filepath.Clean` and anchored at the context
//!   root (`/foo`, `./foo` and `foo/` all mean `foo`);
//! - `*` and `?` do not cross `/`; `**` does (`**/` also matches no directory);
//!   `[...]` is a character class; `\` escapes the next character;
//! - a pattern that matches a parent directory excludes everything under it;
//! - the last matching rule wins, and `!` re-includes.
//!
//! Written by hand because no maintained crate implements these rules (the
//! gitignore matchers differ on anchoring and on `*`); the translation to a
//! regular expression mirrors moby's so the two agree case by case.

use regex::Regex;

#[derive(Debug, thiserror::Error)]
#[error(".dockerignore line {line} (`{pattern}`) is not a valid pattern: {reason}")]
pub struct DockerIgnoreError {
    pub line: usize,
    pub pattern: String,
    pub reason: String,
}

/// The parsed rules of one `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// `!pattern`: a match re-includes.
    exception: bool,
    regex: Regex,
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> Result<DockerIgnore, DockerIgnoreError> {
        let mut rules = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let raw = if index == 0 {
                raw.trim_start_matches('\u{feff}')
            } else {
                raw
            };
            // Comments are recognised before trimming, as Docker does.
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
            }
            let error = |reason: &str| DockerIgnoreError {
                line: index + 1,
                pattern: raw.trim().to_string(),
                reason: reason.to_string(),
            };
            if pattern.is_empty() {
                return Err(error("`!` must be followed by a pattern"));
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let regex = Regex::new(&to_regex(&cleaned))
                .map_err(|e| error(&format!("{e}; escape special characters with `\\`")))?;
            rules.push(Rule { exception, regex });
        }
        Ok(DockerIgnore { rules })
    }

    /// Whether `path` (relative to the context root, `/`-separated) is excluded:
    /// the last rule matching the path or one of its parent directories decides.
    pub fn is_excluded(&self, path: &str) -> bool {
        let parents: Vec<&str> = match path.rfind('/') {
            Some(at) => path[..at].split('/').collect(),
            None => Vec::new(),
        };
        let mut excluded = false;
        for rule in &self.rules {
            // An exception can only flip an excluded path, and a plain rule
            // only an included one (moby skips the others the same way).
            if rule.exception != excluded {
                continue;
            }
            let mut matched = rule.regex.is_match(path);
            if !matched {
                matched = (1..=parents.len()).any(|n| rule.regex.is_match(&parents[..n].join("/")));
            }
            if matched {
                excluded = !rule.exception;
            }
        }
        excluded
    }

    /// Whether any rule is an exception (`!`): then an excluded directory may
    /// still hold re-included files and must be walked.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }
}

/// Go's `filepath.Clean` on `/`-separated paths.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Translates one cleaned pattern into an anchored regular expression, rule
/// for rule as moby's `patternmatcher` does.
fn to_regex(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::from("^");
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 1;
                // `**/` is `**`: the slash is part of "any directories".
                if chars.get(i + 1) == Some(&'/') {
                    i += 1;
                }
                if i + 1 >= chars.len() {
                    out.push_str(".*");
                } else {
                    out.push_str("(.*/)?");
                }
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '\\' => {
                if let Some(next) = chars.get(i + 1) {
                    out.push_str(&regex::escape(&next.to_string()));
                    i += 1;
                } else {
                    out.push_str("\\\\");
                }
            }
            // Regex specials with no glob meaning are literal; `[`, `]` and `^`
            // pass through to form character classes.
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn patterns_are_anchored_at_the_context_root() {
        let di = ignore("foo\n");
        assert!(di.is_excluded("foo"));
        assert!(
            !di.is_excluded("sub/foo"),
            "gitignore would match; Docker does not"
        );
        let di = ignore("/foo\n./bar\nbaz/\n");
        assert!(di.is_excluded("foo") && di.is_excluded("bar") && di.is_excluded("baz"));
    }

    #[test]
    fn star_does_not_cross_a_slash() {
        let di = ignore("*.log\n");
        assert!(di.is_excluded("a.log"));
        assert!(!di.is_excluded("dir/a.log"));
        let di = ignore("dir/*.log\n");
        assert!(di.is_excluded("dir/a.log"));
        assert!(!di.is_excluded("dir/sub/a.log"));
        let di = ignore("a?c\n");
        assert!(di.is_excluded("abc"));
        assert!(!di.is_excluded("a/c"));
    }

    #[test]
    fn double_star_crosses_directories_including_none() {
        let di = ignore("**/*.log\n");
        assert!(di.is_excluded("a.log"));
        assert!(di.is_excluded("x/y/z/a.log"));
        let di = ignore("a/**/b\n");
        assert!(di.is_excluded("a/b"));
        assert!(di.is_excluded("a/x/y/b"));
        assert!(!di.is_excluded("c/a/b"));
        let di = ignore("build/**\n");
        assert!(di.is_excluded("build/x"));
        assert!(di.is_excluded("build/x/y"));
    }

    #[test]
    fn a_matching_parent_excludes_its_children() {
        let di = ignore("node_modules\n");
        assert!(di.is_excluded("node_modules/pkg/index.js"));
        let di = ignore("*/tmp\n");
        assert!(di.is_excluded("a/tmp/file"));
        assert!(!di.is_excluded("a/b/tmp/file"));
    }

    #[test]
    fn last_match_wins_and_exceptions_reinclude() {
        let di = ignore("*.md\n!README.md\n");
        assert!(di.is_excluded("CHANGES.md"));
        assert!(!di.is_excluded("README.md"));
        let di = ignore("!README.md\n*.md\n");
        assert!(di.is_excluded("README.md"), "the later rule wins");
        let di = ignore("docs\n!docs/keep.txt\n");
        assert!(di.is_excluded("docs/other.txt"));
        assert!(!di.is_excluded("docs/keep.txt"));
        assert!(di.has_exceptions());
    }

    #[test]
    fn comments_blank_lines_and_whitespace() {
        let di = ignore("# a comment\n\n   \n  spaced.txt  \n \\#literal\n");
        assert!(di.is_excluded("spaced.txt"));
        assert!(di.is_excluded("#literal"));
        assert!(!di.is_excluded("# a comment"));
        assert!(!di.has_exceptions());
    }

    #[test]
    fn regex_specials_are_literal_and_classes_work() {
        let di = ignore("a+b.(c)\n[0-9]*.tmp\n");
        assert!(di.is_excluded("a+b.(c)"));
        assert!(!di.is_excluded("aab.(c)"));
        assert!(di.is_excluded("7days.tmp"));
        assert!(!di.is_excluded("days.tmp"));
    }

    #[test]
    fn paths_are_cleaned_like_go() {
        assert_eq!(clean("a//b/./c/"), "a/b/c");
        assert_eq!(clean("a/../b"), "b");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("/../x"), "/x");
        assert_eq!(clean("./"), ".");
    }

    #[test]
    fn invalid_patterns_name_the_line() {
        let err = DockerIgnore::parse("ok\n!\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = DockerIgnore::parse("[z-a]\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
