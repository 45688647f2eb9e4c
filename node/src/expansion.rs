//! Kubernetes' `$(VAR)` expansion (command, args, env values, subPathExpr): `$(NAME)`
//! becomes the variable's value when it is defined and stays as written when not; `$$`
//! escapes a `$`; anything else is kept as is.

/// Expands `input` with `lookup`.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_as_kubernetes_does() {
        let env = |n: &str| match n {
            "POD" => Some("web-0"),
            "EMPTY" => Some(""),
            _ => None,
        };
        for (input, want) in [
            ("logs/$(POD)", "logs/web-0"),
            ("$(POD)$(POD)", "web-0web-0"),
            ("$(MISSING)/x", "$(MISSING)/x"),
            ("$$(POD)", "$(POD)"),
            ("a$b", "a$b"),
            ("$(EMPTY)z", "z"),
            ("$(POD", "$(POD"),
            ("$", "$"),
            ("plain", "plain"),
        ] {
            assert_eq!(expand(input, env), want, "{input}");
        }
    }
}
