import Foundation

/// A scenario file's bytes as text. Scenario files are YAML in UTF-8: anything else (a
/// binary file, Latin-1, UTF-16) is refused at its first byte that is not UTF-8, with that
/// byte's line and column, never decoded lossily (replacement characters would turn a
/// broken file into different names and values).
enum ScenarioText {
    /// The largest scenario file read: a scenario is a few pages of YAML, and a device or a
    /// huge file must be refused before it is read whole.
    static let maxBytes = 16 << 20

    /// `bytes` as a String, or an error at the first byte that is not UTF-8. Lines count
    /// from 1 at each line feed; columns count Unicode scalars from 1, as the YAML parser does.
    static func decode(_ bytes: [UInt8], file: String) throws(ScenarioError) -> String {
        var line = 1, column = 1, offset = 0
        var parser = Unicode.UTF8.ForwardParser()
        var input = bytes.makeIterator()
        while true {
            switch parser.parseScalar(from: &input) {
            case .valid(let scalar):
                offset += scalar.count
                if scalar.count == 1 && scalar.first == 0x0A { line += 1; column = 1 } else { column += 1 }
            case .emptyInput:
                return String(decoding: bytes, as: UTF8.self)
            case .error:
                let byte = String(bytes[offset], radix: 16, uppercase: true)
                throw ScenarioError(file: file, line: line, column: column, field: "",
                                    message: "not UTF-8 text: byte 0x\(byte.count == 1 ? "0" + byte : byte) at offset \(offset) is not valid UTF-8 here (a scenario file is YAML in UTF-8)")
            }
        }
    }

    /// Reads the file at `path` (at most `maxBytes`) and decodes it.
    static func read(path: String) throws(ScenarioError) -> String {
        func refuse(_ message: String) -> ScenarioError { ScenarioError(file: path, line: 0, column: 0, field: "", message: message) }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw refuse("no such file, and no built-in scenario of that name (built-in: \(BuiltinScenarios.names.joined(separator: ", ")))")
        }
        guard !isDirectory.boolValue else { throw refuse("is a directory; expected a YAML scenario file") }
        let data: Data
        do {
            let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
            defer { try? handle.close() }
            data = try handle.read(upToCount: maxBytes + 1) ?? Data()
        } catch {
            throw refuse("cannot read: \(error.localizedDescription)")
        }
        guard data.count <= maxBytes else { throw refuse("larger than \(maxBytes >> 20) MiB; a scenario file is a few pages of YAML") }
        return try decode([UInt8](data), file: path)
    }
}
