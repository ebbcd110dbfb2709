import Simulation
/// A minimal JSON value with deterministic rendering (keys in insertion order), so that the
/// same run prints byte-identical JSON.
enum JSON {
    case object([(String, JSON)])
    case array([JSON])
    case string(String)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case bool(Bool)
    case null

    func render(indent: Int = 0, pretty: Bool = true) -> String {
        let pad = pretty ? String(repeating: "  ", count: indent + 1) : ""
        let end = pretty ? String(repeating: "  ", count: indent) : ""
        let nl = pretty ? "\n" : ""
        switch self {
        case .object(let fields):
            if fields.isEmpty { return "{}" }
            let body = fields.map { "\(pad)\(JSON.quote($0.0)):\(pretty ? " " : "")\($0.1.render(indent: indent + 1, pretty: pretty))" }
            return "{\(nl)\(body.joined(separator: ",\(nl)"))\(nl)\(end)}"
        case .array(let items):
            if items.isEmpty { return "[]" }
            let body = items.map { pad + $0.render(indent: indent + 1, pretty: pretty) }
            return "[\(nl)\(body.joined(separator: ",\(nl)"))\(nl)\(end)]"
        case .string(let s): return JSON.quote(s)
        case .int(let v): return String(v)
        case .uint(let v): return String(v)
        case .double(let v):
            guard v.isFinite else { return "null" }
            // Two decimals for figures, eight for small ratios (invalidations per unmap).
            return abs(v) >= 1 || v == 0 ? String((v * 100).rounded() / 100) : String((v * 1e8).rounded() / 1e8)
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        }
    }

    static func quote(_ s: String) -> String { JSONText.quote(s) }
}
