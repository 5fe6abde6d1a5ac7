//! A compact, namespace-aware element tree read with quick-xml.
//!
//! Input: the raw bytes of one document. Output: [`Dom`], an arena of elements matched later by
//! local name (prefixes are irrelevant; namespaces are classified, not compared by prefix).
//! Failure modes are [`DecodeError`]s with a stable code: the size limit is checked before any
//! copy, the depth limit while reading, and any DOCTYPE stops the read before an entity could
//! be declared, so nothing is ever expanded or fetched.
//!
//! Text is kept per element (direct text only, CDATA included), trimmed: real senders indent
//! values and send whitespace-only elements that mean "empty".

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::DecodeError;

/// The namespaces whose elements are BOD content. Matching is case-insensitive because one real
/// sender (HxGN EAM) declares `InforOAGIs/2`.
const BOD_NAMESPACES: [&str; 3] = [
    "http://schema.infor.com/inforoagis/2",
    "http://www.openapplications.org/oagis/9",
    "http://www.openapplications.org/oagis/10",
];

/// Where an element's name lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// A BOD namespace (InforOAGIS/2, OAGIS 9 or 10) or no namespace at all.
    Bod,
    /// SOAP envelope namespaces (1.1 and 1.2), used to unwrap a BOD sent inside one.
    Soap,
    /// Anything else, e.g. vendor extensions inside `UserArea`.
    Foreign,
}

/// Longest element or attribute name (with its prefix), in bytes. BOD names are a few dozen;
/// the bound keeps error paths and `UserArea` names (built from element names) small.
pub const MAX_NAME_BYTES: usize = 256;

/// Most attributes on one element, namespace declarations included. The duplicate check
/// compares each attribute with the ones before it.
pub const MAX_ATTRIBUTES: usize = 128;

/// Most namespace declarations in scope at once: each element's prefix is resolved against
/// all of them.
pub const MAX_NAMESPACES: usize = 128;

/// Most elements in a document of at most `max_bytes` (`limits.max_bytes`): one for every 24
/// bytes allowed, and at least 100,000. A node takes 64 bytes and `<a/>` 4 of the document,
/// so without a bound a document of the allowed size would take 16 times its size in memory
/// (in every lane at once); with it, at most 2.7 times. Real BODs take 50–150 bytes an
/// element indented, 40 or more minified; the largest real sample has 436 elements.
pub fn max_elements(max_bytes: usize) -> usize {
    (max_bytes / 24).max(100_000)
}

/// Most attributes in a document of at most `max_bytes`: one for every 16 bytes allowed, and
/// at least 200,000 (40 bytes each in memory, against 5 in the document).
pub fn max_attributes(max_bytes: usize) -> usize {
    (max_bytes / 16).max(200_000)
}

/// No node (end of a sibling chain).
const NONE: u32 = u32::MAX;

/// One element. Names and text borrow from the document text wherever they can (most do: only
/// text with references or split by comments is assembled); children are a sibling chain.
#[derive(Debug, Clone)]
pub struct Element<'a> {
    pub name: &'a str,
    pub ns: Ns,
    attrs: (u32, u32),
    pub text: Cow<'a, str>,
    first_child: u32,
    last_child: u32,
    next_sibling: u32,
}

/// The element tree of one document; node 0 is the root.
#[derive(Debug, Clone)]
pub struct Dom<'a> {
    nodes: Vec<Element<'a>>,
    attrs: Vec<(&'a str, Cow<'a, str>)>,
    /// [`max_elements`] and [`max_attributes`] of the limits it was read under.
    max_elements: usize,
    max_attributes: usize,
}

/// Limits enforced while reading.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 * 1024 * 1024,
            max_depth: 64,
        }
    }
}

impl<'a> Dom<'a> {
    /// The root element.
    pub fn root(&self) -> &Element<'a> {
        &self.nodes[0]
    }

    pub fn node(&self, idx: usize) -> &Element<'a> {
        &self.nodes[idx]
    }

    /// Attribute value of an element by name: an unprefixed attribute by its name, a prefixed
    /// one only by its qualified name (`xsi:type`).
    pub fn attr(&self, idx: usize, name: &str) -> Option<&str> {
        let (from, to) = self.nodes[idx].attrs;
        self.attrs[from as usize..to as usize]
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// All element children of `parent`, in document order.
    pub fn all_children(&self, parent: usize) -> impl Iterator<Item = usize> + '_ {
        let mut next = self.nodes[parent].first_child;
        std::iter::from_fn(move || {
            if next == NONE {
                return None;
            }
            let at = next as usize;
            next = self.nodes[at].next_sibling;
            Some(at)
        })
    }

    /// Children of `parent` in a BOD namespace with the given local name.
    pub fn children<'s>(
        &'s self,
        parent: usize,
        name: &'s str,
    ) -> impl Iterator<Item = usize> + 's {
        self.all_children(parent).filter(move |&c| {
            let n = &self.nodes[c];
            // Length and first byte before the comparison (siblings rarely share both).
            n.ns == Ns::Bod
                && n.name.len() == name.len()
                && n.name.as_bytes().first() == name.as_bytes().first()
                && n.name == name
        })
    }

    /// First child of `parent` with the given local name.
    pub fn child(&self, parent: usize, name: &str) -> Option<usize> {
        self.children(parent, name).next()
    }

    /// Follows a `/`-separated path of local names from `parent`, taking the first match at
    /// each step.
    pub fn find(&self, parent: usize, path: &str) -> Option<usize> {
        // A byte scan: paths are short, and `str::split` sets up a searcher for each.
        let mut at = parent;
        let mut rest = path;
        loop {
            match rest.bytes().position(|b| b == b'/') {
                Some(i) => {
                    at = self.child(at, &rest[..i])?;
                    rest = &rest[i + 1..];
                }
                None => return self.child(at, rest),
            }
        }
    }

    /// Trimmed text at `path` below `parent`; `None` when absent or empty.
    pub fn text(&self, parent: usize, path: &str) -> Option<&str> {
        self.find(parent, path)
            .map(|i| self.nodes[i].text.as_ref())
            .filter(|t| !t.is_empty())
    }

    /// Parses a document. The bytes are decoded as UTF-8 unless the XML declaration or a BOM
    /// names another encoding that encoding_rs knows (one real C# sender sends iso-8859-1).
    /// `text` is the decoded document (see [`decode_text`]); the tree borrows from it.
    pub fn parse(text: &'a str, limits: Limits) -> Result<Dom<'a>, DecodeError> {
        read_tree(text, limits)
    }
}

/// Checks the size limit and decodes the bytes to text, before anything else is done.
pub fn decode(bytes: &[u8], limits: Limits) -> Result<Cow<'_, str>, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    decode_text(bytes)
}

/// Turns bytes into text: a BOM or a declared non-UTF-8 encoding is honoured; otherwise the
/// bytes must be valid UTF-8.
fn decode_text(bytes: &[u8]) -> Result<Cow<'_, str>, DecodeError> {
    if let Some((encoding, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        let (text, had_errors) = encoding.decode_without_bom_handling(&bytes[bom_len..]);
        if had_errors {
            return Err(DecodeError::NotWellFormed {
                message: format!("invalid {} byte sequence", encoding.name()),
                position: None,
                path: None,
            });
        }
        return Ok(text);
    }
    if let Some(label) = declared_encoding(bytes) {
        match encoding_rs::Encoding::for_label(label.as_bytes()) {
            // The declaration was read one byte a character, so the document is not UTF-16
            // (which needs a byte order mark, and two bytes a character); .NET's StringWriter
            // declares "utf-16" over text it then saves in another encoding.
            Some(enc) if enc == encoding_rs::UTF_16LE || enc == encoding_rs::UTF_16BE => {
                return Err(DecodeError::NotWellFormed {
                    message: format!(
                        "the document declares encoding {label:?} but is not UTF-16 (no byte order \
                         mark, one byte a character): fix the declaration or the encoding"
                    ),
                    position: None,
                    path: None,
                });
            }
            Some(enc) if enc != encoding_rs::UTF_8 => {
                let (text, _, had_errors) = enc.decode(bytes);
                if had_errors {
                    return Err(DecodeError::NotWellFormed {
                        message: format!("invalid {} byte sequence", enc.name()),
                        position: None,
                        path: None,
                    });
                }
                return Ok(text);
            }
            Some(_) => {}
            None => {
                return Err(DecodeError::NotWellFormed {
                    message: format!("unsupported encoding {label:?}"),
                    position: None,
                    path: None,
                })
            }
        }
    }
    std::str::from_utf8(bytes)
        .map(Cow::Borrowed)
        .map_err(|e| DecodeError::NotWellFormed {
            message: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            position: Some(e.valid_up_to() as u64),
            path: None,
        })
}

/// The `encoding` pseudo-attribute of a leading XML declaration, if any.
fn declared_encoding(bytes: &[u8]) -> Option<String> {
    let head = bytes.get(..bytes.len().min(200))?;
    let head = String::from_utf8_lossy(head);
    let decl = head.trim_start().strip_prefix("<?xml")?;
    let decl = &decl[..decl.find("?>")?];
    let at = decl.find("encoding")?;
    let rest = decl[at + "encoding".len()..]
        .trim_start()
        .strip_prefix('=')?;
    let rest = rest.trim_start();
    let quote = rest.chars().next()?;
    if quote != '"' && quote != '\'' {
        return None;
    }
    let value = &rest[1..];
    Some(value[..value.find(quote)?].to_string())
}

/// The class of a namespace URI: case-insensitive, trailing `/` ignored; the empty URI
/// (`xmlns=""`) means no namespace.
fn classify(uri: &[u8]) -> Ns {
    let mut uri = uri;
    while let [rest @ .., b'/'] = uri {
        uri = rest;
    }
    let is = |known: &str| uri.eq_ignore_ascii_case(known.as_bytes());
    if uri.is_empty() || BOD_NAMESPACES.iter().any(|k| is(k)) {
        Ns::Bod
    } else if is("http://schemas.xmlsoap.org/soap/envelope")
        || is("http://www.w3.org/2003/05/soap-envelope")
    {
        Ns::Soap
    } else {
        Ns::Foreign
    }
}

/// Namespace declarations in scope: (prefix, class of its URI, depth of the element that
/// declared it); the empty prefix is the default namespace. Only the class matters to
/// bodflow, so elements are resolved against this small stack instead of full URIs.
#[derive(Default)]
struct Namespaces<'a> {
    bindings: Vec<(&'a [u8], Ns, usize)>,
    /// Scratch: the qualified attribute names of the element being read (duplicate check).
    keys: Vec<&'a [u8]>,
}

impl<'a> Namespaces<'a> {
    /// The class of an element name's prefix. No prefix and no default namespace: no
    /// namespace (BOD content). An undeclared prefix is foreign rather than an error: the
    /// typed reader decides whether the element matters.
    fn resolve(&self, prefix: &[u8]) -> Ns {
        // Lengths first: most names have no prefix, and slice equality would call memcmp.
        match self
            .bindings
            .iter()
            .rev()
            .find(|(p, _, _)| p.len() == prefix.len() && (p.is_empty() || *p == prefix))
        {
            Some((_, ns, _)) => *ns,
            None if prefix.is_empty() => Ns::Bod,
            None => Ns::Foreign,
        }
    }

    /// Forgets the declarations of elements at `depth` and deeper.
    fn leave(&mut self, depth: usize) {
        while self.bindings.last().is_some_and(|(_, _, d)| *d >= depth) {
            self.bindings.pop();
        }
    }
}

/// A structural limit crossed; [`located`] adds the path of the open elements.
fn too_complex(what: String) -> DecodeError {
    DecodeError::TooComplex { what, path: None }
}

/// A limit crossed by element `name`, which is not open yet: [`located`] puts it below the
/// open elements.
fn too_complex_at(name: &str, what: String) -> DecodeError {
    DecodeError::TooComplex {
        what,
        path: Some(name.to_string()),
    }
}

fn not_well_formed(message: impl Into<String>, position: u64) -> DecodeError {
    DecodeError::NotWellFormed {
        message: message.into(),
        position: Some(position),
        path: None,
    }
}

/// `error` with where it happened in `text`: the line and column of its position in the
/// message, and the path of the open elements.
fn located(error: DecodeError, text: &str, dom: &Dom<'_>, open: &[usize]) -> DecodeError {
    let path = || {
        (!open.is_empty()).then(|| {
            open.iter().fold(String::new(), |mut path, &idx| {
                path.push('/');
                path.push_str(dom.nodes[idx].name);
                path
            })
        })
    };
    let (mut message, position) = match error {
        DecodeError::NotWellFormed {
            message,
            position: Some(position),
            path: None,
        } => (message, position),
        // A limit names the element that crossed it: an open one (`path: None`, the open
        // elements end with it), or one not open yet (`too_complex_at`, a relative name
        // below the open ones).
        DecodeError::TooDeep { limit, path: at } if below_open(&at) => {
            return DecodeError::TooDeep {
                limit,
                path: under(path(), at),
            }
        }
        DecodeError::TooComplex { what, path: at } if below_open(&at) => {
            return DecodeError::TooComplex {
                what,
                path: under(path(), at),
            }
        }
        error => return error,
    };
    let before = &text.as_bytes()[..(position as usize).min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Columns count characters: continuation bytes of UTF-8 do not start one.
    let column = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xC0 != 0x80)
        .count()
        + 1;
    message.push_str(&format!(" (line {line}, column {column})"));
    DecodeError::NotWellFormed {
        message,
        position: Some(position),
        path: path(),
    }
}

/// Whether an error's path is still to be placed below the open elements ([`located`]).
fn below_open(at: &Option<String>) -> bool {
    at.as_ref().is_none_or(|p| !p.starts_with('/'))
}

/// The open elements' path, with `element` (not open) below it.
fn under(open: Option<String>, element: Option<String>) -> Option<String> {
    match element {
        Some(element) => Some(format!("{}/{element}", open.unwrap_or_default())),
        None => open,
    }
}

/// `part` as a slice of `src` when it lies inside it (quick-xml hands out borrowed slices of
/// the input for a `from_str` reader), so names and text need no copy.
fn reslice<'a>(src: &'a str, part: &[u8]) -> Option<&'a str> {
    let offset = (part.as_ptr() as usize).checked_sub(src.as_ptr() as usize)?;
    src.get(offset..offset.checked_add(part.len())?)
}

fn owned_or_borrowed<'a>(
    src: &'a str,
    part: &[u8],
    position: u64,
) -> Result<Cow<'a, str>, DecodeError> {
    match reslice(src, part) {
        Some(s) => Ok(Cow::Borrowed(s)),
        None => std::str::from_utf8(part)
            .map(|s| Cow::Owned(s.to_string()))
            .map_err(|e| not_well_formed(e.to_string(), position)),
    }
}

/// XML 1.0 Char production: what a well-formed document may contain (and what bodflow may
/// write back out).
fn legal_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML 1.0 NameStartChar.
fn name_start_char(c: char) -> bool {
    matches!(c, ':' | 'A'..='Z' | '_' | 'a'..='z' | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}'
        | '\u{F8}'..='\u{2FF}' | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}'
        | '\u{200C}'..='\u{200D}' | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}'
        | '\u{3001}'..='\u{D7FF}' | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}'
        | '\u{10000}'..='\u{EFFFF}')
}

/// XML 1.0 NameChar.
fn name_char(c: char) -> bool {
    name_start_char(c)
        || matches!(c, '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// Per ASCII byte: bit 1 if it may start an XML name, bit 2 if it may continue one.
const NAME_BYTES: [u8; 128] = {
    let mut table = [0u8; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            3
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            2
        } else {
            0
        };
        b += 1;
    }
    table
};

/// Whether `name` is an XML 1.0 Name. quick-xml takes everything up to the first blank as an
/// element's name and up to `=` as an attribute's, so `<a;b>` or `<a b<c="1">` would pass.
fn is_xml_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    let ascii = |b: u8, bit: u8| b < 0x80 && NAME_BYTES[usize::from(b)] & bit != 0;
    // Fast path, one table look-up a byte: the names of BODs are ASCII.
    if ascii(first, 1) && rest.iter().all(|&b| ascii(b, 2)) {
        return true;
    }
    if bytes.is_ascii() {
        return false;
    }
    let mut chars = name.chars();
    chars.next().is_some_and(name_start_char) && chars.all(name_char)
}

/// `name` (of an element or of one of `element`'s attributes) as an XML Name.
fn check_name(name: &str, element: Option<&str>, position: u64) -> Result<(), DecodeError> {
    if is_xml_name(name) {
        return Ok(());
    }
    let what = match element {
        None => format!("element name {name:?}"),
        Some(element) => format!("attribute name {name:?} of <{element}>"),
    };
    Err(not_well_formed(
        format!("{what} is not an XML name"),
        position,
    ))
}

fn check_chars(text: &str, position: u64) -> Result<(), DecodeError> {
    // Fast path: only control bytes other than tab/LF/CR and U+FFFE/FFFF (EF BF BE/BF) can be
    // illegal in valid UTF-8.
    if !text
        .bytes()
        .any(|b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0xEF)
    {
        return Ok(());
    }
    match text.chars().find(|&c| !legal_char(c)) {
        Some(c) => Err(not_well_formed(
            format!("character U+{:04X} is not allowed in XML", c as u32),
            position,
        )),
        None => Ok(()),
    }
}

/// Adds a direct-text piece to an open element. The element's text is the trimmed
/// concatenation of its pieces, so whitespace-only pieces (the indentation between child
/// elements) are held back until real text follows: leading ones are never kept and trailing
/// ones are dropped at the end tag, and indentation costs no copy.
fn push_text<'a>(slot: &mut Cow<'a, str>, pending: &mut Cow<'a, str>, piece: Cow<'a, str>) {
    let blank = piece
        .bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        || piece.trim().is_empty();
    if blank {
        if !slot.is_empty() {
            append(pending, piece);
        }
        return;
    }
    if !pending.is_empty() {
        append(slot, std::mem::take(pending));
    }
    append(slot, piece);
}

fn append<'a>(slot: &mut Cow<'a, str>, piece: Cow<'a, str>) {
    if slot.is_empty() {
        *slot = piece;
    } else {
        slot.to_mut().push_str(&piece);
    }
}

fn read_tree(text: &str, limits: Limits) -> Result<Dom<'_>, DecodeError> {
    let max_depth = limits.max_depth;
    let mut dom = Dom {
        nodes: Vec::with_capacity(128),
        attrs: Vec::with_capacity(64),
        max_elements: max_elements(limits.max_bytes),
        max_attributes: max_attributes(limits.max_bytes),
    };
    // Open elements, each with its held-back whitespace (see `push_text`).
    let mut stack: Vec<(usize, Cow<'_, str>)> = Vec::with_capacity(16);
    match read_events(text, max_depth, &mut dom, &mut stack) {
        Ok(()) => Ok(dom),
        Err(e) => {
            let open: Vec<usize> = stack.iter().map(|(idx, _)| *idx).collect();
            Err(located(e, text, &dom, &open))
        }
    }
}

/// Reads `text` into `dom`; `stack` holds the open elements (where an error happened).
fn read_events<'a>(
    text: &'a str,
    max_depth: usize,
    dom: &mut Dom<'a>,
    stack: &mut Vec<(usize, Cow<'a, str>)>,
) -> Result<(), DecodeError> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    reader.config_mut().trim_text(false);
    let mut root_closed = false;
    let mut namespaces = Namespaces::default();

    loop {
        let position = reader.buffer_position();
        let event = match reader.read_event() {
            Ok(v) => v,
            Err(e) => {
                let message = e.to_string();
                return Err(not_well_formed(message, reader.error_position()));
            }
        };
        if root_closed && matches!(event, Event::Start(_) | Event::Empty(_)) {
            return Err(not_well_formed("more than one root element", position));
        }
        match event {
            Event::Start(start) => {
                let idx = push_element(text, dom, stack, &mut namespaces, &start, position)?;
                stack.push((idx, Cow::Borrowed("")));
                if stack.len() > max_depth {
                    return Err(DecodeError::TooDeep {
                        limit: max_depth,
                        path: None,
                    });
                }
            }
            Event::Empty(start) => {
                let idx = push_element(text, dom, stack, &mut namespaces, &start, position)?;
                namespaces.leave(stack.len());
                if stack.len() + 1 > max_depth {
                    // Never opened: named below the open elements, as a `Start` one would be.
                    return Err(DecodeError::TooDeep {
                        limit: max_depth,
                        path: Some(dom.nodes[idx].name.to_string()),
                    });
                }
                if stack.is_empty() {
                    root_closed = true;
                }
            }
            Event::End(_) => {
                if let Some((idx, _)) = stack.pop() {
                    namespaces.leave(stack.len());
                    let slot = &mut dom.nodes[idx].text;
                    let trimmed_len = slot.trim().len();
                    if trimmed_len != slot.len() {
                        *slot = match std::mem::take(slot) {
                            Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
                            Cow::Owned(o) => Cow::Owned(o.trim().to_string()),
                        };
                    }
                }
                if stack.is_empty() {
                    root_closed = true;
                }
            }
            Event::Text(t) => {
                // Indentation before an element's first text (most text events) is dropped
                // by `push_text` anyway, and XML whitespace is always legal: skip it early.
                if t.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
                    && stack
                        .last()
                        .is_none_or(|(idx, _)| dom.nodes[*idx].text.is_empty())
                {
                    continue;
                }
                let piece = owned_or_borrowed(text, &t, position)?;
                check_chars(&piece, position)?;
                match stack.last_mut() {
                    Some((idx, pending)) => push_text(&mut dom.nodes[*idx].text, pending, piece),
                    None if piece.trim().is_empty() => {}
                    None => return Err(not_well_formed("text outside the root element", position)),
                }
            }
            Event::CData(t) => {
                let piece = owned_or_borrowed(text, &t, position)?;
                check_chars(&piece, position)?;
                match stack.last_mut() {
                    Some((idx, pending)) => push_text(&mut dom.nodes[*idx].text, pending, piece),
                    None => {
                        return Err(not_well_formed("CDATA outside the root element", position))
                    }
                }
            }
            Event::GeneralRef(r) => {
                let resolved = resolve_reference(&r).map_err(|m| not_well_formed(m, position))?;
                if !legal_char(resolved) {
                    return Err(not_well_formed(
                        format!(
                            "character reference U+{:04X} is not allowed in XML",
                            resolved as u32
                        ),
                        position,
                    ));
                }
                match stack.last_mut() {
                    Some((idx, pending)) => push_text(
                        &mut dom.nodes[*idx].text,
                        pending,
                        Cow::Owned(resolved.to_string()),
                    ),
                    None => {
                        return Err(not_well_formed(
                            "reference outside the root element",
                            position,
                        ))
                    }
                }
            }
            Event::DocType(_) => return Err(DecodeError::DoctypeForbidden),
            // XML forbids `--` inside a comment, and so a `-` right before its `-->`.
            Event::Comment(c) if c.windows(2).any(|w| w == b"--") || c.ends_with(b"-") => {
                return Err(not_well_formed("'--' inside a comment", position));
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => {
                if let Some(open) = stack.last().map(|(o, _)| *o) {
                    return Err(not_well_formed(
                        format!(
                            "unexpected end of document inside <{}>",
                            dom.nodes[open].name
                        ),
                        position,
                    ));
                }
                if dom.nodes.is_empty() {
                    return Err(not_well_formed("no root element", position));
                }
                return Ok(());
            }
        }
    }
}

fn push_element<'a>(
    text: &'a str,
    dom: &mut Dom<'a>,
    stack: &[(usize, Cow<'a, str>)],
    namespaces: &mut Namespaces<'a>,
    start: &BytesStart<'_>,
    position: u64,
) -> Result<usize, DecodeError> {
    if start.name().as_ref().len() > MAX_NAME_BYTES {
        return Err(too_complex(format!(
            "an element name longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    let (Some(qualified), Cow::Borrowed(name)) = (
        reslice(text, start.name().as_ref()),
        owned_or_borrowed(text, start.local_name().into_inner(), position)?,
    ) else {
        // Only a non-`from_str` reader would hand out copies; names must borrow.
        return Err(not_well_formed("unreadable element name", position));
    };
    check_name(qualified, None, position)?;
    if dom.nodes.len() >= dom.max_elements {
        return Err(too_complex_at(
            name,
            format!("more than {} elements in the document", dom.max_elements),
        ));
    }
    let depth = stack.len();
    let attrs_from = dom.attrs.len() as u32;
    namespaces.keys.clear();
    let mut attributes = start.attributes();
    // Duplicates are checked below against a reused buffer instead of quick-xml's per-element
    // allocation.
    attributes.with_checks(false);
    for attr in attributes {
        let attr = attr.map_err(|e| not_well_formed(e.to_string(), position))?;
        let Some(key) = reslice(text, attr.key.as_ref()) else {
            return Err(not_well_formed("unreadable attribute name", position));
        };
        if key.len() > MAX_NAME_BYTES {
            return Err(too_complex_at(
                name,
                format!("an attribute name of <{name}> longer than {MAX_NAME_BYTES} bytes"),
            ));
        }
        // After the length: a refusal quotes the name.
        check_name(key, Some(qualified), position)?;
        let key = key.as_bytes();
        if namespaces.keys.len() == MAX_ATTRIBUTES {
            return Err(too_complex_at(
                name,
                format!("more than {MAX_ATTRIBUTES} attributes on <{name}>"),
            ));
        }
        if namespaces.keys.contains(&key) {
            return Err(not_well_formed(
                format!("attribute {:?} appears twice", String::from_utf8_lossy(key)),
                position,
            ));
        }
        namespaces.keys.push(key);
        // quick-xml ends a start tag at the first `>` outside quotes and takes everything
        // between the quotes as the value; XML forbids a literal `<` there (AttValue).
        if attr.value.contains(&b'<') {
            return Err(not_well_formed(
                format!(
                    "'<' in the value of attribute {:?} of <{name}> (write it as &lt;)",
                    String::from_utf8_lossy(key)
                ),
                position,
            ));
        }
        let value: Cow<'a, str> = if attr.value.contains(&b'&') {
            Cow::Owned(
                attr.unescape_value()
                    .map_err(|e| not_well_formed(e.to_string(), position))?
                    .trim()
                    .to_string(),
            )
        } else {
            match owned_or_borrowed(text, &attr.value, position)? {
                Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
                Cow::Owned(o) => Cow::Owned(o.trim().to_string()),
            }
        };
        check_chars(&value, position)?;
        // Namespace declarations are not data: they scope the names of this element and its
        // descendants.
        let declared = if key == b"xmlns" {
            Some(&b""[..])
        } else {
            key.strip_prefix(b"xmlns:")
        };
        if let Some(prefix) = declared {
            if namespaces.bindings.len() == MAX_NAMESPACES {
                return Err(too_complex_at(
                    name,
                    format!(
                        "more than {MAX_NAMESPACES} namespace declarations in scope at <{name}>"
                    ),
                ));
            }
            namespaces
                .bindings
                .push((prefix, classify(value.as_bytes()), depth));
            continue;
        }
        // BOD attributes are unqualified (`type`, `languageID`); a prefixed one belongs to
        // another vocabulary (`xsi:type` on a noun) and keeps its prefix, so that it is
        // never read as the BOD's attribute of the same local name.
        let Some(key) = reslice(text, attr.key.as_ref()) else {
            return Err(not_well_formed("unreadable attribute name", position));
        };
        if dom.attrs.len() >= dom.max_attributes {
            return Err(too_complex_at(
                name,
                format!(
                    "more than {} attributes in the document",
                    dom.max_attributes
                ),
            ));
        }
        dom.attrs.push((key, value));
    }
    let ns = namespaces.resolve(start.name().prefix().map_or(&b""[..], |p| p.into_inner()));
    let idx = dom.nodes.len();
    dom.nodes.push(Element {
        name,
        ns,
        attrs: (attrs_from, dom.attrs.len() as u32),
        text: Cow::Borrowed(""),
        first_child: NONE,
        last_child: NONE,
        next_sibling: NONE,
    });
    if let Some(parent) = stack.last().map(|(p, _)| *p) {
        let last = dom.nodes[parent].last_child;
        if last == NONE {
            dom.nodes[parent].first_child = idx as u32;
        } else {
            dom.nodes[last as usize].next_sibling = idx as u32;
        }
        dom.nodes[parent].last_child = idx as u32;
    } else if idx != 0 {
        return Err(not_well_formed("more than one root element", position));
    }
    Ok(idx)
}

/// Resolves `&name;` and `&#NN;` references. Only the five predefined entities exist: a
/// document cannot declare more because DOCTYPE is refused.
fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> Result<char, String> {
    if r.is_char_ref() {
        return match r.resolve_char_ref() {
            Ok(Some(c)) => Ok(c),
            _ => Err("invalid character reference".to_string()),
        };
    }
    let name = r.decode().map_err(|e| e.to_string())?;
    match name.as_ref() {
        "lt" => Ok('<'),
        "gt" => Ok('>'),
        "amp" => Ok('&'),
        "apos" => Ok('\''),
        "quot" => Ok('"'),
        other => Err(format!("undefined entity &{other};")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Dom<'_>, DecodeError> {
        Dom::parse(s, Limits::default())
    }

    #[test]
    fn namespace_declarations_are_scoped_to_their_element() {
        let dom = parse(
            r#"<A xmlns="http://schema.infor.com/InforOAGIS/2/">
                 <B xmlns="urn:vendor"><C/></B>
                 <D/>
                 <p:E xmlns:p="HTTP://WWW.OPENAPPLICATIONS.ORG/OAGIS/10"/>
                 <p:F/>
                 <s:G xmlns:s="http://www.w3.org/2003/05/soap-envelope"/>
               </A>"#,
        )
        .unwrap();
        let ns: Vec<(&str, Ns)> = (1..7).map(|i| (dom.node(i).name, dom.node(i).ns)).collect();
        assert_eq!(
            ns,
            [
                ("B", Ns::Foreign),
                ("C", Ns::Foreign),
                ("D", Ns::Bod),
                ("E", Ns::Bod),
                ("F", Ns::Foreign),
                ("G", Ns::Soap)
            ]
        );
        let err = parse(r#"<A x="1" y="2" x="3"/>"#).unwrap_err();
        assert_eq!(err.code(), "not_well_formed");
        assert!(err.to_string().contains("appears twice"), "{err}");
        assert!(parse(r#"<A p:x="1" q:x="2" xmlns:p="urn:p" xmlns:q="urn:q"/>"#).is_ok());
        // A literal `<` in an attribute value is not XML (found by tests/robustness.rs: the
        // value ended up echoed in an Acknowledge); escaped, and `>` or `]]>`, it is.
        let err = parse(r#"<A lid="a<B>c</B>d">x</A>"#).unwrap_err();
        assert_eq!(err.code(), "not_well_formed");
        assert!(
            err.to_string()
                .contains("'<' in the value of attribute \"lid\" of <A>"),
            "{err}"
        );
        let dom = parse(r#"<A lid="a&lt;b>c]]>d">x</A>"#).unwrap();
        assert_eq!(dom.attr(0, "lid"), Some("a<b>c]]>d"));
    }

    #[test]
    fn names_that_are_not_xml_names_and_double_hyphens_in_comments_are_not_xml() {
        for (doc, says) in [
            ("<a;b>x</a;b>", r#"element name "a;b" is not an XML name"#),
            (r#"<a"b>x</a"b>"#, "is not an XML name"),
            ("<A><1B/></A>", r#"element name "1B" is not an XML name"#),
            (
                "<A><\u{B7}B/></A>",
                r#"element name "·B" is not an XML name"#,
            ),
            (
                r#"<A b<c="1"/>"#,
                r#"attribute name "b<c" of <A> is not an XML name"#,
            ),
            (
                r#"<A -b="1"/>"#,
                r#"attribute name "-b" of <A> is not an XML name"#,
            ),
            ("<A><!-- a -- b --></A>", "'--' inside a comment"),
            ("<A><!-- a ---></A>", "'--' inside a comment"),
        ] {
            let err = parse(doc).unwrap_err();
            assert_eq!(err.code(), "not_well_formed", "{doc}");
            assert!(err.to_string().contains(says), "{doc}: {err}");
        }
        // Letters of any script, digits, `.`, `-`, `_`, `·` after the first, prefixes.
        for doc in [
            r#"<Ä-b.c_1 xmlns:p="urn:p" p:x-y="1"><p:Ωmega/><_a/><B·C/></Ä-b.c_1>"#,
            "<A><!-- a - b --><!----></A>",
        ] {
            assert!(parse(doc).is_ok(), "{doc}: {:?}", parse(doc).err());
        }
    }

    #[test]
    fn errors_name_line_column_and_the_open_elements() {
        let err = parse("<A>\n  <B>\n    <Ç>x</c>\n  </B>\n</A>").unwrap_err();
        assert_eq!(err.code(), "not_well_formed");
        assert!(err.to_string().ends_with("(line 3, column 9)"), "{err}");
        assert_eq!(err.path(), Some("/A/B/Ç"));
        // Outside the root: a place, no path.
        let err = parse("<A/>x").unwrap_err();
        assert!(err.to_string().ends_with("(line 1, column 5)"), "{err}");
        assert_eq!(err.path(), None);
        // An attribute is refused before its element opens: the path is its parent's.
        let err = parse("<A><B c=\"<\"/></A>").unwrap_err();
        assert!(err.to_string().contains("of <B>"), "{err}");
        assert_eq!(err.path(), Some("/A"));
    }

    #[test]
    fn text_is_the_trimmed_concatenation_of_direct_pieces() {
        let dom =
            parse("<A>\n  <B/>\n  x <!-- c --> y\n  <B/>  <B/>&#32;z&#x20;\n  <B/>\n</A>").unwrap();
        assert_eq!(dom.root().text, "x  y\n     z");
        let dom = parse("<A>\n  <B/>\n</A>").unwrap();
        assert_eq!(dom.root().text, "", "indentation alone is no text");
        assert!(
            matches!(dom.root().text, Cow::Borrowed(_)),
            "indentation costs no copy"
        );
        let err = parse("<A>\n\u{b}<B/></A>").unwrap_err();
        assert!(err.to_string().contains("U+000B"), "{err}");
    }

    #[test]
    fn prefixes_are_ignored_and_namespaces_classified() {
        let dom = parse(
            r#"<oa:A xmlns:oa="http://www.openapplications.org/oagis/9" xmlns:v="urn:x">
                 <oa:B>  x  </oa:B><v:C>y</v:C></oa:A>"#,
        )
        .unwrap();
        assert_eq!(dom.root().name, "A");
        assert_eq!(dom.text(0, "B"), Some("x"));
        assert_eq!(
            dom.child(0, "C"),
            None,
            "foreign elements are not BOD content"
        );
        let c = dom.all_children(0).nth(1).unwrap();
        assert_eq!(dom.node(c).ns, Ns::Foreign);
    }

    #[test]
    fn entities_and_cdata_are_resolved_into_text() {
        let dom = parse("<A>a &amp; b &#x41;<![CDATA[<c>]]></A>").unwrap();
        assert_eq!(dom.root().text, "a & b A<c>");
    }

    #[test]
    fn doctype_is_refused_before_any_expansion() {
        let err = parse(
            r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><A>&lol2;</A>"#,
        )
        .unwrap_err();
        assert_eq!(err.code(), "doctype_forbidden");
    }

    #[test]
    fn characters_xml_forbids_are_not_well_formed() {
        for bad in [
            "<A>a\u{1}b</A>",
            "<A>&#x1;</A>",
            "<A x='&#xFFFE;'/>",
            "<A>\u{FFFF}</A>",
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), "not_well_formed", "{bad:?}");
        }
        assert!(parse("<A>tab\there &#x10000; ok</A>").is_ok());
    }

    #[test]
    fn undefined_entities_are_not_well_formed() {
        assert_eq!(parse("<A>&foo;</A>").unwrap_err().code(), "not_well_formed");
    }

    #[test]
    fn truncated_and_mismatched_documents_are_not_well_formed() {
        for bad in [
            "<A><B>x</B>",
            "<A><B>x</C></A>",
            "",
            "just text",
            "<A/><B/>",
            "<A/>tail",
        ] {
            assert_eq!(parse(bad).unwrap_err().code(), "not_well_formed", "{bad:?}");
        }
    }

    #[test]
    fn a_prefixed_attribute_is_not_read_as_the_unprefixed_one() {
        let dom = parse(
            r#"<ContactMaster xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="oa:ContactMasterType"><Name xsi:type="x" type="legal"/></ContactMaster>"#,
        )
        .unwrap();
        assert_eq!(dom.attr(0, "type"), None);
        assert_eq!(dom.attr(0, "xsi:type"), Some("oa:ContactMasterType"));
        let name = dom.child(0, "Name").unwrap();
        assert_eq!(dom.attr(name, "type"), Some("legal"));
    }

    #[test]
    fn limits_are_enforced() {
        let err = decode(
            b"<A>0123456789</A>",
            Limits {
                max_bytes: 10,
                max_depth: 64,
            },
        )
        .unwrap_err();
        assert_eq!(err.code(), "too_large");
        let deep = format!("{}{}", "<a>".repeat(70), "</a>".repeat(70));
        assert_eq!(parse(&deep).unwrap_err().code(), "too_deep");
        let deep_empty = format!("{}<b/>{}", "<a>".repeat(64), "</a>".repeat(64));
        assert_eq!(parse(&deep_empty).unwrap_err().code(), "too_deep");
    }

    #[test]
    fn latin1_declared_documents_are_transcoded() {
        let mut bytes = b"<?xml version=\"1.0\" encoding=\"iso-8859-1\"?><A>M".to_vec();
        bytes.push(0xFC); // ü in latin-1
        bytes.extend_from_slice(b"nchen</A>");
        let text = decode(&bytes, Limits::default()).unwrap();
        assert_eq!(
            Dom::parse(&text, Limits::default()).unwrap().root().text,
            "München"
        );
    }

    #[test]
    fn utf16_declared_over_single_byte_text_says_so_and_real_utf16_is_read() {
        let err = decode(
            b"<?xml version=\"1.0\" encoding=\"utf-16\"?><A>x</A>",
            Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.code(), "not_well_formed");
        assert!(
            err.to_string()
                .contains("declares encoding \"utf-16\" but is not UTF-16"),
            "{err}"
        );
        // With its byte order mark, UTF-16 is read whatever the declaration says.
        let mut utf16 = vec![0xFF, 0xFE];
        for u in "<?xml version=\"1.0\" encoding=\"utf-16\"?><A>ü</A>".encode_utf16() {
            utf16.extend_from_slice(&u.to_le_bytes());
        }
        let text = decode(&utf16, Limits::default()).unwrap();
        assert_eq!(
            Dom::parse(&text, Limits::default()).unwrap().root().text,
            "ü"
        );
    }

    #[test]
    fn invalid_utf8_is_not_well_formed() {
        let err = decode(b"<A>\xff\xfe</A>", Limits::default()).unwrap_err();
        assert_eq!(err.code(), "not_well_formed");
    }
}
