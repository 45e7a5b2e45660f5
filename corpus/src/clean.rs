//! Cleaning of message text: what is left must be the natural-language words a person reads,
//! not the program's markup, placeholders or keyboard mnemonics (which would let a classifier
//! learn formatting conventions of a catalog instead of the language).
//!
//! Steps, in order (each one a function below, so each can be reasoned about alone):
//! 1. strip markup tags (`<b>`, `</a>`, `<a href="..">`);
//! 2. decode the common entities (`&amp; &lt; &gt; &quot; &apos; &#NN; &#xHH;`);
//! 3. remove accelerator mnemonics (`_File`, `&File`, and the CJK `(_F)` / `(&F)` suffix);
//! 4. remove placeholders: printf (`%s`, `%1$d`, `%-10s`, `%.2f`, `%lu`, `%'d`, `%<PRIu64>`,
//!    Python `%(name)s`, Qt `%1`, strftime `%H`, binutils `%P`; `%%` becomes `%`), braces
//!    (`{name}`, `{0}`, `{}`) and shell (`${x}`, `$(x)`, `$x` when an identifier follows);
//!    then the quotes or brackets that held only placeholders (`'%s'`, `« %s »`), and the
//!    punctuation a leading placeholder leaves (`%s: not found`);
//! 5. turn `\n`/`\t` escapes and every control character (real newlines and tabs included)
//!    into spaces;
//! 6. Unicode NFC;
//! 7. collapse whitespace and trim.
//!
//! After step 5 no TAB, CR or LF can remain, which is what makes the TSV output safe.

use unicode_normalization::UnicodeNormalization;

/// Minimum length, in characters, of a kept translation: shorter texts ("OK", "Cancel",
/// "Fichier") carry too little to identify a language and are dominated by loanwords.
pub const MIN_CHARS: usize = 10;

/// Cleans one msgid or msgstr (see the module documentation for the steps).
pub fn clean(s: &str) -> String {
    clean_inner(s, false).0
}

/// Cleans a msgid and its translation together. The same as [`clean`] on each, except that
/// when the msgid carries an `_` mnemonic (it is a GUI label), the translation's single
/// mid-word `_` is taken as its mnemonic even in an all-lower-case word ("ca_rpeta",
/// "ut_logging"), where [`clean`] alone could not tell it from an identifier.
pub fn clean_pair(msgid: &str, msgstr: &str) -> (String, String) {
    let (msgid, label) = clean_inner(msgid, false);
    let (text, _) = clean_inner(msgstr, label);
    (msgid, text)
}

/// The pipeline; `label` as in [`clean_pair`]. Also says whether an `_` mnemonic was removed.
fn clean_inner(s: &str, label: bool) -> (String, bool) {
    let s = strip_tags(s);
    let s = decode_entities(&s);
    let (s, had_mnemonic) = strip_mnemonics(&s, label);
    let s = strip_placeholders(&s);
    (normalise_space(&s), had_mnemonic)
}

/// Whether a cleaned (msgid, translation) pair belongs in the corpus.
///
/// False when the translation is shorter than [`MIN_CHARS`] characters, when it is identical
/// to the msgid (an untranslated copy teaches nothing about the language and mislabels
/// English), or when the msgid cleaned to nothing (no parallel English side left, e.g. a
/// msgid that was only placeholders).
pub fn keep(msgid_clean: &str, text_clean: &str) -> bool {
    !msgid_clean.is_empty() && text_clean != msgid_clean && text_clean.chars().nth(MIN_CHARS - 1).is_some()
}

/// Tags whose removal must leave a space, because they separate words visually.
const BREAK_TAGS: &[&str] = &[
    "br", "p", "div", "li", "ul", "ol", "tr", "td", "th", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
    "para", "title",
];

/// Step 1: removes `<tag ...>`, `</tag>` and `<tag/>`. A `<` must be followed by a letter (or
/// `/` and a letter) to start a tag, so `a < b` survives; `%<PRIu64>` is a printf conversion,
/// not markup, and is left for step 4.
fn strip_tags(s: &str) -> String {
    if !s.contains('<') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('<') {
        let (before, tail) = rest.split_at(pos);
        out.push_str(before);
        let after_percent = before.ends_with('%') || (before.is_empty() && out.ends_with('%'));
        match (!after_percent).then(|| tag_len(tail)).flatten() {
            Some((len, name)) => {
                if BREAK_TAGS.iter().any(|t| t.eq_ignore_ascii_case(name)) {
                    out.push(' ');
                }
                rest = &tail[len..];
            }
            None => {
                out.push('<');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Length in bytes of the tag at the start of `s` (which starts with `<`) and its name.
fn tag_len(s: &str) -> Option<(usize, &str)> {
    let b = s.as_bytes();
    let mut i = 1;
    if b.get(i) == Some(&b'/') {
        i += 1;
    }
    let name_start = i;
    if !b.get(i)?.is_ascii_alphabetic() {
        return None;
    }
    while b.get(i).is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'_' | b'-' | b'.')) {
        i += 1;
    }
    let name = &s[name_start..i];
    match b.get(i)? {
        b'>' => Some((i + 1, name)),
        b'/' if b.get(i + 1) == Some(&b'>') => Some((i + 2, name)),
        c if c.is_ascii_whitespace() => {
            // Attributes: anything up to the closing '>' on the same line, no nested '<'.
            let end = s[i..].find(['>', '<', '\n'])? + i;
            (b[end] == b'>').then_some((end + 1, name))
        }
        _ => None,
    }
}

/// Step 2: decodes the named entities markup uses and numeric character references. Anything
/// else starting with `&` is left alone (it may be a mnemonic for step 3).
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        match entity(tail) {
            Some((len, c)) => {
                out.push(c);
                rest = &tail[len..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The entity at the start of `s` (which starts with `&`): its length and character.
fn entity(s: &str) -> Option<(usize, char)> {
    // Entities are short; a bounded look-ahead keeps `&` in long text cheap.
    let semi = s.char_indices().take(12).find(|&(_, c)| c == ';')?.0;
    let body = &s[1..semi];
    let c = match body {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        _ => {
            let num = body.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((semi + 1, c))
}

/// Step 3: removes keyboard mnemonics.
///
/// - The CJK style `(_F)`, `(&F)` (also with full-width parentheses) is removed whole: the
///   letter is a Latin key, not part of the translated text.
/// - `&&` is a literal `&`; `&` before a letter or digit is a mnemonic, except between two
///   capitals (`AT&T`, `R&D`).
/// - `_` before a letter or digit is a mnemonic when it is the only `_` of its word and
///   either starts the word (`_File`) or sits in a mixed-case word (`E_xit`, `Ö_ffnen`):
///   identifiers and metavariables (`LC_ALL`, `file_name`, `ИМЯ_ФАЙЛА`, `__init__`) keep theirs.
///   With `label` (the text is a GUI label, see [`clean_pair`]) a lone `_` inside a word is a
///   mnemonic whatever the case of the word.
///
/// Returns the text and whether an `_` mnemonic was removed.
fn strip_mnemonics(s: &str, label: bool) -> (String, bool) {
    if !s.contains(['_', '&']) {
        return (s.to_owned(), false);
    }
    let mut had_underscore = false;
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '(' | '（')
            && matches!(chars.get(i + 1), Some('_' | '&'))
            && chars.get(i + 2).is_some_and(char::is_ascii_alphanumeric)
            && matches!(chars.get(i + 3), Some(')' | '）'))
        {
            i += 4;
            continue;
        }
        match c {
            '&' if chars.get(i + 1) == Some(&'&') => {
                out.push('&');
                i += 2;
                continue;
            }
            '&' if chars.get(i + 1).is_some_and(|n| n.is_alphanumeric()) => {
                let between_caps =
                    i > 0 && chars[i - 1].is_ascii_uppercase() && chars[i + 1].is_ascii_uppercase();
                if between_caps {
                    out.push('&');
                }
            }
            '_' if is_underscore_mnemonic(&chars, i, label) => had_underscore = true,
            _ => out.push(c),
        }
        i += 1;
    }
    (out, had_underscore)
}

/// Whether the `_` at `chars[i]` is a mnemonic (see [`strip_mnemonics`]).
fn is_underscore_mnemonic(chars: &[char], i: usize, label: bool) -> bool {
    let word_char = |c: &char| c.is_alphanumeric() || *c == '_';
    if !chars.get(i + 1).is_some_and(|c| c.is_alphanumeric()) {
        return false;
    }
    let start = chars[..i].iter().rposition(|c| !word_char(c)).map_or(0, |p| p + 1);
    let end = chars[i..].iter().position(|c| !word_char(c)).map_or(chars.len(), |p| i + p);
    let word = &chars[start..end];
    if word.iter().filter(|&&c| c == '_').count() != 1 {
        return false; // identifiers like _NET_WM_NAME or __init__
    }
    if i == start || label {
        return true; // "_File", "Save _As", or any lone `_` of a label
    }
    // Mid-word: a label's mnemonic sits in a capitalised word ("E_xit", "Kleur_naam",
    // "Ö_ffnen"); identifiers and metavariables are all lower case ("wal_level") or all
    // upper case ("LC_ALL", "ИМЯ_ФАЙЛА").
    let letters = || word.iter().filter(|c| c.is_alphabetic());
    let all_lower = letters().all(|c| c.is_lowercase());
    let all_upper = letters().all(|c| c.is_uppercase());
    !(all_lower || all_upper)
}

/// Marks where a placeholder was removed, so that step 4 can then drop the quotes or
/// brackets left empty around it (`'%s'`, `« %s »`, `(%d)`). A control character: step 4
/// removes every one it adds, and any already in the input becomes a space in step 5.
const MARK: char = '\u{1}';

/// Step 4: removes printf, brace and shell placeholders (`%%` becomes `%`), then the quotes
/// and brackets that enclosed only placeholders, then punctuation a leading placeholder
/// leaves at the start (`%s: not found` gives `not found`).
fn strip_placeholders(s: &str) -> String {
    if !s.contains(['%', '{', '$']) {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0; // start of the not yet copied stretch of `s`
    let mut removed = false;
    while i < b.len() {
        let skip = match b[i] {
            // `%%s` in a format built in two stages is a placeholder of the second stage.
            b'%' if b.get(i + 1) == Some(&b'%') => match printf_len(&b[i + 1..]) {
                Some(len) => Some(len + 1),
                None => {
                    out.push_str(&s[copied..i + 1]);
                    copied = i + 2;
                    i += 2;
                    continue;
                }
            },
            b'%' => printf_len(&b[i..]),
            b'{' => brace_len(&b[i..]),
            b'$' => shell_len(&b[i..]),
            _ => None,
        };
        match skip {
            Some(len) => {
                out.push_str(&s[copied..i]);
                out.push(MARK);
                removed = true;
                i += len;
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&s[copied..]);
    if !removed {
        return out;
    }
    let out = drop_empty_wrappers(&out);
    // Leading placeholders with their separators: "%s: %s: not found" gives "not found".
    let mut rest = out.as_str();
    loop {
        let trimmed = rest.trim_start_matches(|c: char| c == MARK || c.is_whitespace());
        let had_mark = rest[..rest.len() - trimmed.len()].contains(MARK);
        match trimmed.strip_prefix([':', ',', ';']) {
            Some(after) if had_mark => rest = after,
            _ => break,
        }
    }
    let out = rest;
    out.replace(MARK, "")
}

/// Opening and closing characters that can enclose a placeholder, as catalogs use them.
const WRAPPERS: &[(char, char)] = &[
    ('\'', '\''),
    ('"', '"'),
    ('`', '\''),
    ('`', '`'),
    ('«', '»'),
    ('»', '«'),
    ('»', '»'),
    ('„', '“'),
    ('„', '”'),
    ('“', '”'),
    ('“', '“'),
    ('”', '”'),
    ('‘', '’'),
    ('‚', '‘'),
    ('‚', '’'),
    ('’', '’'),
    ('‹', '›'),
    ('›', '‹'),
    ('「', '」'),
    ('『', '』'),
    ('《', '》'),
    ('〈', '〉'),
    ('(', ')'),
    ('（', '）'),
    ('[', ']'),
    ('<', '>'),
];

/// Removes every wrapper pair whose content is only removed placeholders and spaces.
fn drop_empty_wrappers(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if WRAPPERS.iter().any(|&(o, _)| o == c) {
            let mut j = i + 1;
            let mut marks = 0;
            while j < chars.len() && (chars[j] == MARK || chars[j].is_whitespace()) {
                marks += usize::from(chars[j] == MARK);
                j += 1;
            }
            let closes = j < chars.len() && WRAPPERS.contains(&(c, chars[j]));
            if marks > 0 && closes {
                out.push(MARK); // still a removed placeholder, for the leading-punctuation rule
                i = j + 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Length of the printf conversion at the start of `b` (which starts with `%`), if any.
/// Only ASCII bytes are consumed, so the result always ends on a character boundary.
fn printf_len(b: &[u8]) -> Option<usize> {
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    let mut i = 1;
    // Python's named form: %(name)s
    if b.get(i) == Some(&b'(') {
        let close = b[i..].iter().take(64).position(|&c| c == b')')? + i;
        i = close + 1;
    } else {
        // Positional argument: %1$d
        let d = digits(i);
        if d > i && b.get(d) == Some(&b'$') {
            i = d + 1;
        }
    }
    // Flags. No space flag: "50% done" is prose, not "% d".
    while b.get(i).is_some_and(|c| matches!(c, b'-' | b'+' | b'#' | b'0' | b'\'' | b'I')) {
        i += 1;
    }
    let width_start = i;
    // Width: digits, or * with an optional positional argument.
    if b.get(i) == Some(&b'*') {
        i = digits(i + 1);
        if b.get(i) == Some(&b'$') {
            i += 1;
        }
    } else {
        i = digits(i);
    }
    let had_width = i > width_start;
    if b.get(i) == Some(&b'.') {
        i += 1;
        if b.get(i) == Some(&b'*') {
            i = digits(i + 1);
            if b.get(i) == Some(&b'$') {
                i += 1;
            }
        } else {
            i = digits(i);
        }
    }
    let before_length = i;
    for m in [&b"hh"[..], b"ll", b"h", b"l", b"L", b"q", b"j", b"z", b"Z", b"t"] {
        if b[i.min(b.len())..].starts_with(m) {
            i += m.len();
            break;
        }
    }
    match b.get(i) {
        // Pointer extensions of the kernel and binutils: %pA, %pB.
        Some(b'p')
            if b.get(i + 1).is_some_and(u8::is_ascii_uppercase)
                && !b.get(i + 2).is_some_and(u8::is_ascii_alphabetic) =>
        {
            Some(i + 2)
        }
        Some(c) if b"diouxXeEfFgGaAcspnCSm".contains(c) => Some(i + 1),
        // System-dependent conversion: %<PRIu64>, the macro name includes the conversion.
        Some(b'<') => {
            let close = b[i..].iter().take(32).position(|&c| c == b'>').map(|p| p + i)?;
            let name = &b[i + 1..close];
            (name.starts_with(b"PRI") && name.iter().all(u8::is_ascii_alphanumeric)).then_some(close + 1)
        }
        // Qt-style numbered placeholder %1, %2 (digits only, nothing after them).
        _ if had_width && i == before_length && b[1].is_ascii_digit() => Some(before_length),
        // Anything else that is `%` and one letter alone: strftime (`%H:%M`, `%Y`) and
        // binutils' own directives (`%P:`, `%B`).
        _ => match (b.get(1), b.get(2)) {
            (Some(l), next) if l.is_ascii_alphabetic() && !next.is_some_and(u8::is_ascii_alphabetic) => {
                Some(2)
            }
            _ => None,
        },
    }
}

/// Length of the brace placeholder at the start of `b` (`{name}`, `{0}`, `{}`, `{0:>3}`).
fn brace_len(b: &[u8]) -> Option<usize> {
    let close = b.iter().take(48).position(|&c| c == b'}')?;
    b[1..close].iter().all(|c| c.is_ascii_alphanumeric() || b"_.:!-<>[]".contains(c)).then_some(close + 1)
}

/// Length of the shell variable at the start of `b` (`${x}`, `$(x)` as systemd's messages
/// use it, or `$x` when an identifier follows; `US$ 5` and `$5` are prose).
fn shell_len(b: &[u8]) -> Option<usize> {
    let ident = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    match b.get(1)? {
        open @ (b'{' | b'(') => {
            let closer = if *open == b'{' { b'}' } else { b')' };
            let close = b.iter().take(64).position(|&c| c == closer)?;
            (close > 2 && b[2..close].iter().all(ident)).then_some(close + 1)
        }
        c if c.is_ascii_alphabetic() || *c == b'_' => {
            Some(1 + b[1..].iter().take_while(|c| ident(c)).count())
        }
        _ => None,
    }
}

/// Steps 5–7: escapes and control characters to spaces, NFC, collapse whitespace, trim.
///
/// A single no-break space (U+00A0, U+202F) between words is kept as it is: French puts one
/// before `:` and `?`, a real cue for telling languages apart. Any other run of whitespace
/// becomes one ASCII space.
fn normalise_space(s: &str) -> String {
    let mut spaced = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), Some('n' | 't' | 'r')) {
            chars.next();
            spaced.push(' ');
        } else if c.is_control() {
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let mut out = String::with_capacity(spaced.len());
    let mut run: Option<char> = None; // first char of the current whitespace run
    let mut run_len = 0;
    for c in spaced.nfc() {
        if c.is_whitespace() {
            if run.is_none() {
                run = Some(c);
            }
            run_len += 1;
            continue;
        }
        if let Some(first) = run.take() {
            if !out.is_empty() {
                let nbsp = run_len == 1 && matches!(first, '\u{a0}' | '\u{202f}');
                out.push(if nbsp { first } else { ' ' });
            }
            run_len = 0;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_table() {
        let cases: &[(&str, &str)] = &[
            // markup
            ("<b>Bold</b> text", "Bold text"),
            ("<a href=\"http://x.org\">Link</a> here", "Link here"),
            ("line<br/>next", "line next"),
            ("a < b and c > d", "a < b and c > d"),
            ("Usage: %s <file>", "Usage:"),
            // entities
            ("Fish &amp; Chips", "Fish & Chips"),
            ("&lt;none&gt; &quot;q&quot; &apos;a&apos;", "<none> \"q\" 'a'"),
            ("caf&#233; &#xE9;t&#233;", "café été"),
            // An unknown entity is not decoded; its `&` then reads as a mnemonic, which is harmless.
            ("&unknown; stays", "unknown; stays"),
            // mnemonics
            ("_File", "File"),
            ("&File", "File"),
            ("E_xit", "Exit"),
            ("Save _As…", "Save As…"),
            ("Ö_ffnen", "Öffnen"),
            ("ファイル(_F)", "ファイル"),
            ("開く(&O)...", "開く..."),
            ("文件（_F）", "文件"),
            ("AT&T and R&D", "AT&T and R&D"),
            ("Rock && Roll", "Rock & Roll"),
            ("LC_ALL and file_name and __init__", "LC_ALL and file_name and __init__"),
            ("Print Pre_view", "Print Preview"),
            ("Kleur_naam and ИМЯ_ФАЙЛА", "Kleurnaam and ИМЯ_ФАЙЛА"),
            // printf
            ("%s: cannot open %s", "cannot open"),
            ("user '%s' already exists", "user already exists"),
            ("« %s » introuvable", "introuvable"),
            ("cannot stat `%s': %s", "cannot stat :"),
            ("„%s“ und „%s“ (%d)", "und"),
            ("「%s」を開けません", "を開けません"),
            ("say '' or \"\"", "say '' or \"\""),
            ("%1$d of %2$d", "of"),
            ("[%-10s] %.2f%% done", "% done"),
            ("overwritten by %s:%%sPlease move", "overwritten by :Please move"),
            ("%P: %B: section %pA not found at %H:%M", "section not found at :"),
            ("%lu bytes, %'d items, %5.1Lf", "bytes, items,"),
            ("size %<PRIu64> bytes", "size bytes"),
            ("%(name)s is %(count)d years", "is years"),
            ("50% done, 100%", "50% done, 100%"),
            ("%1 of %2 files", "of files"),
            ("%m", ""),
            // braces and shell
            ("Hello {name}, item {0} {}", "Hello , item"),
            ("{ not a placeholder }", "{ not a placeholder }"),
            ("Path ${HOME}/bin and $USER_NAME!", "Path /bin and !"),
            ("freeze the processes of '$(unit)' unit", "freeze the processes of unit"),
            ("costs US$ 5 or $5", "costs US$ 5 or $5"),
            // escapes, whitespace, NFC
            ("one\\ntwo\\tthree", "one two three"),
            ("  one\n\ttwo\r\n  three  ", "one two three"),
            ("e\u{301}te\u{301}", "\u{e9}t\u{e9}"),
            ("Erreur\u{a0}: fichier", "Erreur\u{a0}: fichier"),
            ("a\u{a0}\u{a0} b", "a b"),
            ("\u{7}bell\u{0}nul", "bell nul"),
        ];
        assert!(cases.len() >= 25);
        let mut failures = Vec::new();
        for (input, want) in cases {
            let got = clean(input);
            if got != *want {
                failures.push(format!("clean({input:?}) = {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn labels_lend_their_mnemonic_to_the_translation() {
        assert_eq!(
            clean_pair("Create _Folder", "Crea una ca_rpeta"),
            ("Create Folder".to_string(), "Crea una carpeta".to_string())
        );
        // No mnemonic in the msgid: a lower-case word keeps its `_` (a metavariable).
        assert_eq!(
            clean_pair("source filename", "source nume_fișier"),
            ("source filename".to_string(), "source nume_fișier".to_string())
        );
        assert_eq!(clean_pair("E_xit", "Be_enden").1, "Beenden");
    }

    #[test]
    fn no_tab_or_newline_survives() {
        for s in ["a\tb", "a\nb", "a\r\nb", "&#9;x&#10;y&#13;", "\t\n"] {
            let c = clean(s);
            assert!(!c.contains(['\t', '\n', '\r']), "{s:?} -> {c:?}");
        }
    }

    #[test]
    fn odd_input_never_panics() {
        for s in
            ["%", "%1$", "%.*", "%<PRI", "${", "{", "<", "</", "&#", "&#x110000;", "_", "(_", "é%é{é$é<é&é_é"]
        {
            let _ = clean(s);
        }
    }

    #[test]
    fn keep_rules() {
        assert!(keep("Open the file", "Ouvrir le fichier"));
        assert!(!keep("Open the file", "Open the file"), "identical to msgid");
        assert!(!keep("Cancel", "Annuler"), "too short");
        assert!(keep("Ten chars!", "十个字符的翻译文本啊"), "10 chars, more bytes");
        assert!(!keep("Nine char", "九个字符的翻译文本"), "9 chars, 27 bytes");
        assert!(!keep("", "a translation of nothing"), "empty msgid");
    }
}
