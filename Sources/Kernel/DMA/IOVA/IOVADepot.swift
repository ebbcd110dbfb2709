/// The shared depot of full magazines behind the per-CPU IOVA caches (Linux
/// `iova_rcache.depot`), one per size class, under the IOVA domain's shared lock.
///
/// Linux keeps one LIFO list per size class: a magazine one CPU pushed goes to whichever CPU
/// next needs one. Here each size class keeps one stack per CPU slot, and a CPU takes back
/// its own magazines first and another CPU's only when it has none in the depot. The ranges
/// handed out are the same kind (any cached range is free); what changes is locality. A CPU
/// that frees a flush queue's worth at once overflows its two magazines and pushes one,
/// then pops one when they run dry; with a single list two CPUs swap magazines, and soon
/// each CPU's IOVAs sit between the other's, so their page-table entries share cache lines
/// that both CPUs write on every map and unmap (measured in docs/architecture.md).
struct IOVADepot: ~Copyable {
    /// Stacks, size class major: `stacks[order * cpus + slot]`.
    private var stacks: [[IOVADomain.Magazine]]
    /// Magazines per size class, and in all.
    private(set) var perOrder: [Int]
    private(set) var total = 0
    let cpus: Int

    init(orders: Int, cpus: Int) {
        self.cpus = max(1, cpus)
        stacks = [[IOVADomain.Magazine]](repeating: [], count: orders * self.cpus)
        perOrder = [Int](repeating: 0, count: orders)
    }

    /// Pushes a full magazine that CPU slot `slot` gave up.
    mutating func push(_ m: IOVADomain.Magazine, order: Int, slot: Int) {
        stacks[order * cpus + slot].append(m)
        perOrder[order] += 1
        total += 1
    }

    /// The magazine `slot` pushed last, else the last one another slot pushed (looking at
    /// the slots after it in turn), else nil.
    mutating func pop(order: Int, slot: Int) -> IOVADomain.Magazine? {
        guard perOrder[order] > 0 else { return nil }
        let base = order * cpus
        var s = slot
        for _ in 0..<cpus {
            if let m = stacks[base + s].popLast() {
                perOrder[order] -= 1
                total -= 1
                return m
            }
            s = s + 1 == cpus ? 0 : s + 1
        }
        return nil
    }

    /// A magazine of the size class holding the most, from its fullest slot stack (trimming).
    mutating func popForTrim() -> IOVADomain.Magazine? {
        guard total > 0, let order = perOrder.indices.max(by: { perOrder[$0] < perOrder[$1] }) else { return nil }
        let base = order * cpus
        guard let slot = (0..<cpus).max(by: { stacks[base + $0].count < stacks[base + $1].count }) else { return nil }
        return pop(order: order, slot: slot)
    }

    /// Takes every magazine of every size class.
    mutating func removeAll() -> [IOVADomain.Magazine] {
        var all: [IOVADomain.Magazine] = []
        all.reserveCapacity(total)
        for i in stacks.indices {
            all += stacks[i]
            stacks[i].removeAll()
        }
        for o in perOrder.indices { perOrder[o] = 0 }
        total = 0
        return all
    }

    /// Cached ranges held in the depot.
    var rangeCount: Int {
        stacks.reduce(0) { $0 + $1.reduce(0) { $0 + Int($1.pointee) } }
    }
}
