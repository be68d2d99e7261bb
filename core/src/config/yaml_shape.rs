//! The shape of a YAML text as the gateway's own YAML parser reads it: libyaml, the parser under
//! serde_yaml, run for its events only. Aliases and nesting are counted on exactly what will be
//! parsed, so no spelling (a bare CR, an escaped quote, a JSON-style key) can hide them from a
//! check that looks at the text instead.

use std::mem::MaybeUninit;

use unsafe_libyaml as unsafe_yaml;

/// What the events of a text show.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// Line (1-based) of the first alias (`*name`), if any.
    pub first_alias: Option<usize>,
    /// Line of the first node nested deeper than the limit given, if any (parsing stops there).
    pub too_deep: Option<usize>,
}

/// Reads `text`'s events, stopping at the first node nested deeper than `max_depth`. `None`
/// when libyaml cannot parse it (serde_yaml then says why, with the place).
pub fn shape(text: &str, max_depth: usize) -> Option<Shape> {
    let input = text.as_bytes();
    // The parser keeps pointers into its own buffers: it stays at one heap address.
    let mut parser: Box<MaybeUninit<unsafe_yaml::yaml_parser_t>> = Box::new(MaybeUninit::uninit());
    let p = parser.as_mut_ptr();
    // SAFETY: `p` points to memory owned by `parser` for this whole function; the parser is
    // initialised before use and deleted once, after the last event; `input` outlives it; every
    // event is deleted right after its type and mark are read.
    unsafe {
        if unsafe_yaml::yaml_parser_initialize(p).fail {
            return None;
        }
        unsafe_yaml::yaml_parser_set_encoding(p, unsafe_yaml::YAML_UTF8_ENCODING);
        unsafe_yaml::yaml_parser_set_input_string(p, input.as_ptr(), input.len() as u64);
        let mut out = Shape::default();
        let mut depth = 0usize;
        let done = loop {
            let mut event = MaybeUninit::<unsafe_yaml::yaml_event_t>::uninit();
            let e = event.as_mut_ptr();
            if unsafe_yaml::yaml_parser_parse(p, e).fail {
                break None;
            }
            let kind = (*e).type_;
            let line = (*e).start_mark.line as usize + 1;
            unsafe_yaml::yaml_event_delete(e);
            match kind {
                unsafe_yaml::YAML_ALIAS_EVENT => {
                    out.first_alias.get_or_insert(line);
                }
                unsafe_yaml::YAML_SEQUENCE_START_EVENT | unsafe_yaml::YAML_MAPPING_START_EVENT => {
                    depth += 1;
                    if depth > max_depth {
                        out.too_deep = Some(line);
                        break Some(out);
                    }
                }
                unsafe_yaml::YAML_SEQUENCE_END_EVENT | unsafe_yaml::YAML_MAPPING_END_EVENT => {
                    depth = depth.saturating_sub(1);
                }
                unsafe_yaml::YAML_STREAM_END_EVENT => break Some(out),
                _ => {}
            }
        };
        unsafe_yaml::yaml_parser_delete(p);
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_and_depth_as_the_parser_reads_them() {
        let alias = |t: &str| shape(t, 64).and_then(|s| s.first_alias);
        assert_eq!(alias("a: &x [1, 2]\nb: *x\n"), Some(2));
        assert_eq!(
            alias("a: [*x]\n"),
            Some(1),
            "an alias of no anchor is one too"
        );
        assert_eq!(alias("a: &x 1\nb: [*x]\n"), Some(2));
        // Spellings a line scanner misreads: a bare CR ends a comment, quotes inside scalars,
        // JSON-style keys, merge keys.
        assert_eq!(alias("# c\ra: &x [1]\rb: [*x, *x]\r"), Some(3));
        assert_eq!(alias("a: &x [1]\nb: [it's, *x]\n"), Some(2));
        assert_eq!(alias("a: &x [1]\nb: [\"a\\\"b\", *x]\n"), Some(2));
        assert_eq!(alias("a: &x [1]\nb: {\"q\":*x}\n"), Some(2));
        assert_eq!(alias("a: &x {k: 1}\nb:\n  <<: *x\n"), Some(3));
        for plain in [
            "models: [\"gemini-*\"]\n",
            "models: [gemini-2.5-*, other]\n",
            "origins: '*'\n",
            "a: 1 # see *x\n",
            "a: x*y\n",
        ] {
            assert_eq!(alias(plain), None, "{plain:?}");
        }
        let deep = format!("a: {}1{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(shape(&deep, 64).unwrap().too_deep, Some(1));
        let cr = format!("# c\r{}", "[".repeat(60_000));
        assert!(
            shape(&cr, 64).unwrap().too_deep.is_some(),
            "stops at the limit"
        );
        assert_eq!(shape("a: [unclosed", 64), None);
    }
}
