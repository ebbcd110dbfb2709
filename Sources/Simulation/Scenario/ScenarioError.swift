/// A scenario file that cannot be run: where (file, line, column, field) and what was expected.
/// Nothing of the scenario runs when loading fails.
public struct ScenarioError: Error, Equatable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    /// The field's path in the document, e.g. `devices[2].rid` (empty for syntax errors).
    public var field: String
    public var message: String

    public init(file: String, line: Int, column: Int, field: String, message: String) {
        self.file = file; self.line = line; self.column = column; self.field = field; self.message = message
    }

    /// `file:line:column: field: message`; an error about the whole file (it cannot be read)
    /// has no line: `file: message`.
    public var description: String {
        let place = line > 0 ? "\(file):\(line):\(column)" : file
        return "\(place): \(field.isEmpty ? "" : "\(field): ")\(message)"
    }
}
