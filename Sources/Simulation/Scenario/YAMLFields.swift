import Yams

/// A YAML node with its place in the document, and typed readers that fail with a
/// `ScenarioError` naming the file, line and field and what was expected.
struct YAMLField {
    let node: Node
    let path: String
    let file: String

    var line: Int { node.mark?.line ?? 0 }
    var column: Int { node.mark?.column ?? 0 }

    func error(_ message: String) -> ScenarioError {
        ScenarioError(file: file, line: line, column: column, field: path, message: message)
    }

    var scalarText: String? { if case .scalar(let s) = node { return s.string } else { return nil } }
    private var shown: String {
        if let s = scalarText { return "'\(s)'" }
        switch node {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        default: return "an alias"
        }
    }

    func string() throws(ScenarioError) -> String {
        guard let s = scalarText, !s.isEmpty else { throw error("expected a non-empty string, got \(shown)") }
        return s
    }

    /// An unsigned integer (decimal or 0x hex, `_` separators allowed) in `range`.
    func unsigned(in range: ClosedRange<UInt64> = 0...UInt64.max) throws(ScenarioError) -> UInt64 {
        guard let raw = scalarText else { throw error("expected an integer, got \(shown)") }
        let s = raw.filter { $0 != "_" }.lowercased()
        let v: UInt64?
        if s.hasPrefix("0x") { v = UInt64(s.dropFirst(2), radix: 16) } else { v = UInt64(s) }
        guard let v else {
            // An integer too large for 64 bits, or a negative one, is out of range, not malformed.
            if Self.isIntegerLiteral(s) { throw error("out of range: expected a value in \(range.lowerBound)...\(range.upperBound), got \(raw)") }
            throw error("expected an integer (decimal or 0x hex), got '\(raw)'")
        }
        guard range.contains(v) else { throw error("out of range: expected a value in \(range.lowerBound)...\(range.upperBound), got \(raw)") }
        return v
    }

    /// Decimal digits with an optional sign, or 0x and hex digits (`_` already removed).
    static func isIntegerLiteral(_ s: String) -> Bool {
        if s.hasPrefix("0x") { return s.count > 2 && s.dropFirst(2).allSatisfy(\.isHexDigit) }
        let digits = s.first == "-" || s.first == "+" ? s.dropFirst() : Substring(s)
        return !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber }
    }

    func int(in range: ClosedRange<Int>) throws(ScenarioError) -> Int {
        Int(try unsigned(in: UInt64(range.lowerBound)...UInt64(range.upperBound)))
    }

    func double(in range: ClosedRange<Double>) throws(ScenarioError) -> Double {
        guard let raw = scalarText, let v = Double(raw), v.isFinite else { throw error("expected a number, got \(shown)") }
        guard range.contains(v) else { throw error("expected a number in \(range.lowerBound)...\(range.upperBound), got \(raw)") }
        return v
    }

    func bool() throws(ScenarioError) -> Bool {
        switch scalarText?.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: throw error("expected true or false, got \(shown)")
        }
    }

    func oneOf(_ choices: [String]) throws(ScenarioError) -> String {
        let s = try string()
        guard choices.contains(s) else { throw error("expected one of \(choices.joined(separator: ", ")), got '\(s)'") }
        return s
    }

    func list() throws(ScenarioError) -> [YAMLField] {
        guard case .sequence(let seq) = node else { throw error("expected a list, got \(shown)") }
        return seq.enumerated().map { YAMLField(node: $0.element, path: "\(path)[\($0.offset)]", file: file) }
    }

    /// A list, or a single value taken as a list of one.
    func listOrOne() throws(ScenarioError) -> [YAMLField] {
        if case .sequence = node { return try list() }
        return [self]
    }

    func mapping() throws(ScenarioError) -> YAMLMapping { try YAMLMapping(self) }
}

/// The keys of one YAML mapping, read one by one; `finish()` rejects any key not read.
final class YAMLMapping {
    let field: YAMLField
    private var entries: [(key: String, value: YAMLField, keyField: YAMLField)] = []
    private var used = Set<String>()
    private var known: [String] = []

    init(_ field: YAMLField) throws(ScenarioError) {
        self.field = field
        guard case .mapping(let m) = field.node else {
            throw field.error("expected a mapping of keys to values, got \(field.scalarText.map { "'\($0)'" } ?? "a list")")
        }
        for (k, v) in m {
            let keyField = YAMLField(node: k, path: field.path, file: field.file)
            guard let key = keyField.scalarText else { throw keyField.error("expected a plain key") }
            if entries.contains(where: { $0.key == key }) { throw keyField.error("key '\(key)' appears twice") }
            let path = field.path.isEmpty ? key : "\(field.path).\(key)"
            entries.append((key, YAMLField(node: v, path: path, file: field.file), keyField))
        }
    }

    /// The value under `key`, if present.
    func optional(_ key: String) -> YAMLField? {
        known.append(key)
        guard let e = entries.first(where: { $0.key == key }) else { return nil }
        used.insert(key)
        return e.value
    }

    func required(_ key: String, _ what: String) throws(ScenarioError) -> YAMLField {
        guard let v = optional(key) else { throw field.error("missing '\(key)' (\(what))") }
        return v
    }

    var keys: [String] { entries.map(\.key) }

    /// The key itself (for an error about the name a key gives).
    func keyField(_ key: String) -> YAMLField? { entries.first { $0.key == key }?.keyField }

    /// Fails on the first key nobody asked for, listing the keys this mapping takes.
    func finish() throws(ScenarioError) {
        for e in entries where !used.contains(e.key) {
            let path = field.path.isEmpty ? e.key : "\(field.path).\(e.key)"
            throw ScenarioError(file: field.file, line: e.keyField.line, column: e.keyField.column, field: path,
                                message: "unknown key '\(e.key)'; expected one of: \(known.joined(separator: ", "))")
        }
    }
}
