import Foundation

/// The scenarios shipped with the simulator (YAML resources in `Scenarios/`).
public enum BuiltinScenarios {
    /// Names of the built-in scenarios, `tour` first.
    public static var names: [String] {
        guard let dir = Bundle.module.resourceURL?.appendingPathComponent("Scenarios"),
              let files = try? FileManager.default.contentsOfDirectory(atPath: dir.path) else { return [] }
        let all = files.filter { $0.hasSuffix(".yaml") }.map { String($0.dropLast(5)) }.sorted()
        return all.contains("tour") ? ["tour"] + all.filter { $0 != "tour" } : all
    }

    /// The YAML text of a built-in scenario, or nil.
    public static func text(named name: String) -> String? {
        guard !name.contains("/"), let dir = Bundle.module.resourceURL?.appendingPathComponent("Scenarios") else { return nil }
        let url = dir.appendingPathComponent(name + ".yaml")
        return try? String(contentsOf: url, encoding: .utf8)
    }

    /// Loads `nameOrPath`: a built-in scenario's name, or a path to a YAML file (UTF-8; a
    /// byte that is not is an error at its line and column).
    public static func load(_ nameOrPath: String) throws(ScenarioError) -> Scenario {
        if let text = text(named: nameOrPath) { return try ScenarioLoader.load(yaml: text, file: "\(nameOrPath).yaml") }
        return try ScenarioLoader.load(yaml: try ScenarioText.read(path: nameOrPath), file: nameOrPath)
    }
}
