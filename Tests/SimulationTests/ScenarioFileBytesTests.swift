import Testing
import Foundation
@testable import Simulation

private func loadError(_ yaml: String) -> ScenarioError? {
    do { _ = try ScenarioLoader.load(yaml: yaml, file: "bad.yaml"); return nil } catch { return error }
}

/// Writes `bytes` to a fresh temporary file and loads it as a scenario file.
private func loadFile(_ bytes: [UInt8]) throws -> (path: String, error: ScenarioError?) {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("scenario-\(UUID().uuidString).yaml").path
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    defer { try? FileManager.default.removeItem(atPath: path) }
    do { _ = try BuiltinScenarios.load(path); return (path, nil) } catch { return (path, error) }
}

@Suite("ScenarioFileBytes: garbage, invalid UTF-8, duplicate keys, huge numbers and oversized buffers are load errors at file:line:column")
struct ScenarioFileBytesTests {
    @Test("bytes that are not UTF-8 are refused at the first bad byte, with its line and column (Unicode scalars)",
          arguments: [([0xFF, 0xFE] + Array("name: x\n".utf8), 1, 1),
                      ([0x89] + Array("PNG\r\n".utf8) + [0x1A, 0x0A, 0x00, 0x00], 1, 1),
                      (Array("name: caf\u{E9}\nunits: ".utf8) + [0xE2, 0x82, 0x0A], 2, 8),
                      (Array("name: \u{E9}\u{E9}".utf8) + [0xC3], 1, 9),
                      (Array("name: x\n\n  ".utf8) + [0xED, 0xA0, 0x80], 3, 3)])
    func invalidUTF8(bytes: [UInt8], line: Int, column: Int) throws {
        let (path, e) = try loadFile(bytes)
        let error = try #require(e)
        #expect(error.file == path)
        #expect(error.line == line && error.column == column, "\(error)")
        #expect(error.message.contains("not UTF-8"), "\(error)")
        #expect(error.description.hasPrefix("\(path):\(line):\(column): "))
    }

    @Test("valid UTF-8 decodes unchanged, names with accents included")
    func validUTF8() throws {
        let text = "name: caf\u{E9}\n# \u{1F600}\n"
        #expect(try ScenarioText.decode(Array(text.utf8), file: "f.yaml") == text)
    }

    @Test("a UTF-8 byte-order mark is skipped; errors on the first line count columns after it")
    func byteOrderMark() throws {
        let valid = "name: bom\nunits: [{name: dmar0}]\ndevices: [{name: nic0, rid: \"00:02.0\", unit: dmar0}]\n"
        #expect(try loadFile([0xEF, 0xBB, 0xBF] + Array(valid.utf8)).error == nil)
        let e = try #require(try loadFile([0xEF, 0xBB, 0xBF] + Array(("colour: 1\n" + valid).utf8)).error)
        #expect(e.line == 1 && e.column == 1 && e.message.contains("unknown key 'colour'"), "\(e)")
    }

    @Test("a NUL or other control byte is a YAML error at its line and column")
    func controlCharacters() throws {
        let nul = try #require(try loadFile(Array("name: x\nunits: [{name: d".utf8) + [0x00] + Array("}]\n".utf8)).error)
        #expect(nul.line == 2 && nul.column == 17, "\(nul)")
        #expect(nul.message.contains("control characters"), "\(nul)")
        let bell = try #require(loadError("name: x\n  \u{07}\n"))
        #expect(bell.line == 2 && bell.column == 3, "\(bell)")
    }

    @Test("a key given twice is an error at the key, at the top level and nested, in block and flow mappings",
          arguments: [("name: a\nname: b\nunits: [{name: dmar0}]\ndevices: []\n", 1, 1, "'name'"),
                      ("name: a\nmachine: {cpus: 2, cpus: 3}\nunits: [{name: dmar0}]\ndevices: []\n", 2, 11, "'cpus'"),
                      ("name: a\nunits:\n  - name: dmar0\n    levels: 4\n    levels: 5\ndevices: []\n", 4, 5, "'levels'")])
    func duplicateKeys(yaml: String, line: Int, column: Int, key: String) throws {
        let e = try #require(loadError(yaml))
        #expect(e.line == line && e.column == column, "\(e)")
        #expect(e.message.contains("key \(key) appears more than once"), "\(e)")
    }

    @Test("an integer beyond 64 bits or below zero is out of range, not malformed; text is not an integer",
          arguments: [("18446744073709551616", true), ("99999999999999999999999", true), ("0x1_0000_0000_0000_0000", true),
                      ("-1", true), ("12abc", false), ("0x", false)])
    func hugeNumbers(value: String, outOfRange: Bool) throws {
        let e = try #require(loadError("name: a\nmachine: {memory-mib: \(value)}\nunits: [{name: dmar0}]\ndevices: []\n"))
        #expect(e.line == 2 && e.field == "machine.memory-mib", "\(e)")
        if outOfRange {
            #expect(e.message.hasPrefix("out of range: expected a value in 4...4096"), "\(e)")
        } else {
            #expect(e.message.contains("expected an integer"), "\(e)")
        }
    }

    @Test("buffer sets and DMA rings that need more frames than the machine's memory are refused at the set or ring that goes past it")
    func buffersBeyondMemory() throws {
        // 4 MiB: 1024 frames.
        let base = """
        name: big
        machine: {memory-mib: 4}
        units: [{name: dmar0}]
        devices: [{name: nic0, rid: "00:02.0", unit: dmar0}]
        buffers:
          - {name: a, domain: nic0, iova: 0x100000, count: 600}
          - {name: a2, domain: nic0, iova: 0x10000000, like: a}
          - {name: b, domain: nic0, iova: 0x20000000, count: SECOND}
        workloads:
          - {name: ring, type: dma-ring, device: nic0, count: RING}
        """
        func load(second: Int, ring: Int) -> ScenarioError? {
            loadError(base.replacingOccurrences(of: "SECOND", with: "\(second)").replacingOccurrences(of: "RING", with: "\(ring)"))
        }
        #expect(load(second: 400, ring: 24) == nil, "exactly the machine's 1024 frames fit; a set like another shares its frames")
        let set = try #require(load(second: 425, ring: 1))
        #expect(set.line == 8 && set.field == "buffers[2]", "\(set)")
        #expect(set.message.contains("buffer set b") && set.message.contains("1025 frames") && set.message.contains("memory-mib: 4"), "\(set)")
        let ring = try #require(load(second: 400, ring: 25))
        #expect(ring.line == 10 && ring.message.contains("DMA ring ring"), "\(ring)")
    }

    @Test("a file over 16 MiB and a directory are refused without a line; the message has no 0:0")
    func unreadableFiles() throws {
        let (path, e) = try loadFile([UInt8](repeating: 0x20, count: ScenarioText.maxBytes + 1))
        let big = try #require(e)
        #expect(big.line == 0 && big.message.contains("larger than 16 MiB"), "\(big)")
        #expect(big.description == "\(path): \(big.message)")
        let dir = FileManager.default.temporaryDirectory.path
        #expect(throws: ScenarioError.self) { try BuiltinScenarios.load(dir) }
    }
}
