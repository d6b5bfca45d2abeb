//! Fuzzes the names a user or a registry hands hull: image references,
//! digests and platforms. Nothing may panic; every parsed value must
//! print as something that parses back to it (canonical and familiar
//! forms of a reference alike), and a digest that passes may only be
//! `sha256:` and 64 lowercase hex digits (it becomes a file name).

#![no_main]

use images::digest;
use images::platform::Platform;
use images::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();

    if let Ok(r) = Reference::parse(s) {
        let canonical = r.to_string();
        let again = Reference::parse(&canonical)
            .unwrap_or_else(|e| panic!("{s:?} -> {canonical:?} does not parse: {e}"));
        assert_eq!(again, r, "{s:?} -> {canonical:?}");
        let familiar = r.familiar();
        let again = Reference::parse(&familiar)
            .unwrap_or_else(|e| panic!("{s:?} -> familiar {familiar:?} does not parse: {e}"));
        assert_eq!(again, r, "{s:?} -> familiar {familiar:?}");
        let repo = Reference::parse(&r.repository())
            .unwrap_or_else(|e| panic!("{s:?} -> repository {:?}: {e}", r.repository()));
        assert_eq!(repo.repository(), r.repository());
        if let Some(d) = r.digest() {
            assert!(digest::hex(d).is_ok());
            assert_eq!(r.manifest_ref(), d.to_string());
        }
        if let Some(t) = r.tag() {
            let tagged = r.with_tag(t);
            assert_eq!(Reference::parse(&tagged.to_string()).ok(), Some(tagged));
        }
    }

    if let Ok(d) = digest::parse(s) {
        assert_eq!(d.to_string(), s);
        let hex = digest::hex(&d).expect("a parsed digest has no safe hex part");
        assert!(digest::is_sha256_hex(hex));
        assert_eq!(digest::parse(d.as_ref()).ok(), Some(d));
    }

    if let Ok(p) = Platform::parse(s) {
        let text = p.to_string();
        assert_eq!(Platform::parse(&text).ok(), Some(p), "{s:?} -> {text:?}");
    }
});
