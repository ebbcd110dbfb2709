import Foundation

/// Inline SVG plots for `HTMLPage`: line plots (linear or log axes), grouped histograms and
/// timelines. Every plot is one `<svg class="plot">` with a title, axes with tick labels, a
/// legend, and data marks of class `mark` (paths, circles, rects); all text is escaped.
enum SVGPlot {
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]

    enum Scale { case linear, log }

    struct Axis {
        var label: String
        var scale: Scale = .linear
        /// Tick label text for a value.
        var format: (Double) -> String = SVGPlot.number
    }

    struct Series {
        var name: String
        var color: String
        var points: [(x: Double, y: Double)]
        var dashed = false
    }

    /// A lane of a timeline: events from `start` to `end` (x units), each drawn with a
    /// height proportional to its weight (1 for plain events).
    struct Lane {
        var name: String
        var color: String
        var events: [(start: Double, end: Double, weight: Double)]
    }

    // Layout.
    static let width = 640.0, height = 380.0
    static let left = 78.0, right = 20.0, top = 54.0, bottom = 58.0

    // MARK: Line plot

    static func lines(id: String, title: String, x: Axis, y: Axis, series: [Series]) -> String {
        let xs = series.flatMap { $0.points.map(\.x) }, ys = series.flatMap { $0.points.map(\.y) }
        let xm = Mapper(values: xs, scale: x.scale, from: left, to: width - right, zeroBased: false)
        let ym = Mapper(values: ys, scale: y.scale, from: height - bottom, to: top, zeroBased: true)
        var out = open(id: id, title: title)
        out += axes(xm, ym, x: x, y: y)
        for s in series where !s.points.isEmpty {
            let pts = s.points.sorted { $0.x < $1.x }
            let d = pts.enumerated().map { i, p in "\(i == 0 ? "M" : "L")\(f(xm.map(p.x))),\(f(ym.map(p.y)))" }.joined(separator: " ")
            out += "<path class=\"mark line\" d=\"\(d)\" fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"2\"\(s.dashed ? " stroke-dasharray=\"6 4\"" : "")/>"
            for p in pts {
                out += "<circle class=\"mark\" cx=\"\(f(xm.map(p.x)))\" cy=\"\(f(ym.map(p.y)))\" r=\"3.5\" fill=\"\(s.color)\"><title>\(esc(s.name)): \(esc(x.format(p.x))), \(esc(y.format(p.y)))</title></circle>"
            }
        }
        out += legend(series.map { ($0.name, $0.color, $0.dashed) })
        return out + "</svg>"
    }

    // MARK: Grouped histogram

    /// Bars per category (x), one per series, side by side; `emptyLabel` is drawn when every
    /// count is 0 (the plot still has its axes and the label as its mark).
    static func histogram(id: String, title: String, categories: [String], xLabel: String, yLabel: String,
                          series: [(name: String, color: String, counts: [Double])], emptyLabel: String) -> String {
        let maxCount = series.flatMap(\.counts).max() ?? 0
        let ym = Mapper(values: [0, max(maxCount, 1)], scale: .linear, from: height - bottom, to: top, zeroBased: true)
        var out = open(id: id, title: title)
        let plotW = width - left - right
        let n = max(categories.count, 1)
        let slot = plotW / Double(n)
        // Axes: y ticks, x category labels (thinned to fit).
        out += "<g class=\"axis\" font-size=\"11\">"
        for t in ym.ticks {
            let y = ym.map(t)
            out += "<line x1=\"\(f(left))\" x2=\"\(f(width - right))\" y1=\"\(f(y))\" y2=\"\(f(y))\" stroke=\"#eceef2\"/>"
            out += "<text x=\"\(f(left - 6))\" y=\"\(f(y + 4))\" text-anchor=\"end\">\(esc(number(t)))</text>"
        }
        let every = max(1, Int((Double(n) * 46 / plotW).rounded(.up)))
        for (i, c) in categories.enumerated() where i % every == 0 {
            let x = left + slot * (Double(i) + 0.5)
            out += "<text x=\"\(f(x))\" y=\"\(f(height - bottom + 16))\" text-anchor=\"middle\">\(esc(c))</text>"
        }
        out += frame()
        out += axisLabels(x: xLabel, y: yLabel)
        out += "</g>"
        if maxCount == 0 {
            out += "<text class=\"mark\" x=\"\(f(left + plotW / 2))\" y=\"\(f((top + height - bottom) / 2))\" text-anchor=\"middle\" font-size=\"15\" fill=\"#777\">\(esc(emptyLabel))</text>"
        } else {
            let barW = max(1, slot * 0.84 / Double(max(series.count, 1)))
            for (k, s) in series.enumerated() {
                for (i, c) in s.counts.enumerated() where c > 0 && i < n {
                    let x = left + slot * Double(i) + slot * 0.08 + barW * Double(k)
                    let y = ym.map(c)
                    out += "<rect class=\"mark\" x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(barW))\" height=\"\(f(max(1, height - bottom - y)))\" fill=\"\(s.color)\"><title>\(esc(s.name)) \(esc(categories[i])): \(esc(number(c)))</title></rect>"
                }
            }
        }
        out += legend(series.map { ($0.name, $0.color, false) })
        return out + "</svg>"
    }

    // MARK: Timeline

    /// Lanes over [x0, x1]: each event a bar as wide as it lasted (at least one pixel),
    /// merged per pixel column, as tall as its weight relative to the lane's largest. An
    /// empty lane says so ("none in this run", a mark: the plot states that there was none).
    static func timeline(id: String, title: String, x: Axis, range: (Double, Double), lanes: [Lane], emptyText: String = "none in this run") -> String {
        let laneH = 34.0
        let h = top + Double(lanes.count) * (laneH + 8) + bottom
        let xm = Mapper(values: [range.0, range.1], scale: .linear, from: left + 60, to: width - right, zeroBased: false, exact: true)
        var out = open(id: id, title: title, height: h)
        let plotL = left + 60, plotR = width - right, columns = Int(plotR - plotL)
        out += "<g class=\"axis\" font-size=\"11\">"
        let axisY = h - bottom
        for t in xm.ticks {
            let px = xm.map(t)
            out += "<line x1=\"\(f(px))\" x2=\"\(f(px))\" y1=\"\(f(top))\" y2=\"\(f(axisY))\" stroke=\"#eceef2\"/>"
            out += "<text x=\"\(f(px))\" y=\"\(f(axisY + 16))\" text-anchor=\"middle\">\(esc(x.format(t)))</text>"
        }
        out += "<line x1=\"\(f(plotL))\" x2=\"\(f(plotR))\" y1=\"\(f(axisY))\" y2=\"\(f(axisY))\" stroke=\"#555\"/>"
        out += "<text x=\"\(f((plotL + plotR) / 2))\" y=\"\(f(h - 14))\" text-anchor=\"middle\" font-size=\"12\">\(esc(x.label))</text>"
        out += "</g>"
        for (li, lane) in lanes.enumerated() {
            let y0 = top + Double(li) * (laneH + 8)
            out += "<rect x=\"\(f(plotL))\" y=\"\(f(y0))\" width=\"\(f(plotR - plotL))\" height=\"\(f(laneH))\" fill=\"#f6f7f9\"/>"
            out += "<text x=\"\(f(plotL - 6))\" y=\"\(f(y0 + laneH / 2 + 4))\" text-anchor=\"end\" font-size=\"11\">\(esc(lane.name))</text>"
            var col = [Double](repeating: 0, count: max(columns, 1))
            for e in lane.events {
                let a = Int(((xm.map(max(e.start, range.0)) - plotL)).rounded(.down))
                let b = Int(((xm.map(min(max(e.end, e.start), range.1)) - plotL)).rounded(.down))
                guard b >= 0, a < col.count else { continue }
                // An event three or more pixels wide leaves its first and last columns free,
                // so back-to-back events stay apart.
                let (first, last) = b - a >= 3 ? (a + 1, b - 1) : (a, max(a, b))
                guard last >= 0, first < col.count else { continue }
                for c in max(first, 0)...min(last, col.count - 1) { col[c] = max(col[c], e.weight) }
            }
            let top = col.max() ?? 0
            if top <= 0 {
                out += "<text class=\"mark empty\" x=\"\(f(plotL + 8))\" y=\"\(f(y0 + laneH / 2 + 4))\" font-size=\"11\" fill=\"#888\">\(esc(emptyText))</text>"
                continue
            }
            for (c, w) in col.enumerated() where w > 0 {
                let bh = max(2, laneH * w / top)
                out += "<rect class=\"mark\" x=\"\(f(plotL + Double(c)))\" y=\"\(f(y0 + laneH - bh))\" width=\"1\" height=\"\(f(bh))\" fill=\"\(lane.color)\"/>"
            }
        }
        return out + "</svg>"
    }

    // MARK: Pieces

    private static func open(id: String, title: String, height h: Double = height) -> String {
        "<svg class=\"plot\" id=\"\(esc(id))\" xmlns=\"http://www.w3.org/2000/svg\" width=\"\(f(width))\" height=\"\(f(h))\" viewBox=\"0 0 \(f(width)) \(f(h))\" role=\"img\" aria-label=\"\(esc(title))\">"
            + "<title>\(esc(title))</title>"
            + "<text x=\"\(f(width / 2))\" y=\"22\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"600\">\(esc(title))</text>"
    }

    private static func frame() -> String {
        "<line x1=\"\(f(left))\" x2=\"\(f(width - right))\" y1=\"\(f(height - bottom))\" y2=\"\(f(height - bottom))\" stroke=\"#555\"/>"
            + "<line x1=\"\(f(left))\" x2=\"\(f(left))\" y1=\"\(f(top))\" y2=\"\(f(height - bottom))\" stroke=\"#555\"/>"
    }

    private static func axisLabels(x: String, y: String) -> String {
        "<text x=\"\(f((left + width - right) / 2))\" y=\"\(f(height - 14))\" text-anchor=\"middle\" font-size=\"12\">\(esc(x))</text>"
            + "<text transform=\"translate(16 \(f((top + height - bottom) / 2))) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">\(esc(y))</text>"
    }

    private static func axes(_ xm: Mapper, _ ym: Mapper, x: Axis, y: Axis) -> String {
        var out = "<g class=\"axis\" font-size=\"11\">"
        for t in ym.ticks {
            let py = ym.map(t)
            out += "<line x1=\"\(f(left))\" x2=\"\(f(width - right))\" y1=\"\(f(py))\" y2=\"\(f(py))\" stroke=\"#eceef2\"/>"
            out += "<text x=\"\(f(left - 6))\" y=\"\(f(py + 4))\" text-anchor=\"end\">\(esc(y.format(t)))</text>"
        }
        if ym.hasZeroRow {
            let py = ym.map(0)
            out += "<text x=\"\(f(left - 6))\" y=\"\(f(py + 4))\" text-anchor=\"end\">0</text>"
        }
        for t in xm.ticks {
            let px = xm.map(t)
            out += "<line x1=\"\(f(px))\" x2=\"\(f(px))\" y1=\"\(f(top))\" y2=\"\(f(height - bottom))\" stroke=\"#eceef2\"/>"
            out += "<text x=\"\(f(px))\" y=\"\(f(height - bottom + 16))\" text-anchor=\"middle\">\(esc(x.format(t)))</text>"
        }
        out += frame()
        out += axisLabels(x: x.label + (x.scale == .log ? " (log)" : ""), y: y.label + (y.scale == .log ? " (log)" : ""))
        return out + "</g>"
    }

    private static func legend(_ items: [(String, String, Bool)]) -> String {
        var out = "<g class=\"legend\" font-size=\"11\">"
        var x = left + 8
        let y = top - 14
        for (name, color, dashed) in items {
            out += "<line x1=\"\(f(x))\" x2=\"\(f(x + 18))\" y1=\"\(f(y))\" y2=\"\(f(y))\" stroke=\"\(color)\" stroke-width=\"3\"\(dashed ? " stroke-dasharray=\"4 3\"" : "")/>"
            out += "<text x=\"\(f(x + 22))\" y=\"\(f(y + 4))\">\(esc(name))</text>"
            x += 34 + Double(name.count) * 6.4
        }
        return out + "</g>"
    }

    /// Values to pixels along one axis. Log axes draw values ≤ 0 on a row of their own below
    /// the lowest decade, labelled 0.
    struct Mapper {
        let scale: Scale
        let lo: Double, hi: Double
        let from: Double, to: Double
        let ticks: [Double]
        let hasZeroRow: Bool

        init(values: [Double], scale: Scale, from: Double, to: Double, zeroBased: Bool, exact: Bool = false) {
            self.from = from; self.to = to
            let finite = values.filter(\.isFinite)
            if scale == .log, let minPos = finite.filter({ $0 > 0 }).min(), let maxV = finite.max() {
                self.scale = .log
                var l = pow(10, (log10(minPos)).rounded(.down)), h = pow(10, (log10(maxV)).rounded(.up))
                if h <= l { h = l * 10 }
                if !exact { l = min(l, h / 10) }
                lo = l; hi = h
                var t: [Double] = []
                var v = l
                while v <= h * 1.0001 { t.append(v); v *= 10 }
                ticks = t
                hasZeroRow = finite.contains { $0 <= 0 }
            } else {
                self.scale = .linear
                var l = zeroBased ? min(0, finite.min() ?? 0) : (finite.min() ?? 0)
                var h = finite.max() ?? 1
                if h <= l {
                    // One value: centre it (or start at 0 for a zero-based axis).
                    let pad = max(abs(h) * 0.5, 1)
                    l = zeroBased ? min(0, l - pad) : l - pad
                    h += pad
                }
                let step = Mapper.step(h - l)
                if !exact {
                    l = (l / step).rounded(.down) * step
                    h = (h / step).rounded(.up) * step
                    if h <= l { h = l + step }
                }
                lo = l; hi = h
                var t: [Double] = []
                var v = (l / step).rounded(.up) * step
                while v <= h + step * 1e-9 { t.append(v); v += step }
                ticks = t
                hasZeroRow = false
            }
        }

        static func step(_ span: Double) -> Double {
            let raw = span / 5
            let mag = pow(10, log10(raw).rounded(.down))
            let n = raw / mag
            return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag
        }

        func map(_ v: Double) -> Double {
            let zeroGap = 18.0
            switch scale {
            case .linear:
                return from + (v - lo) / (hi - lo) * (to - from)
            case .log:
                let dir = to > from ? 1.0 : -1.0
                let start = hasZeroRow ? from + dir * zeroGap : from
                if v <= 0 { return from }
                let t = (log10(max(v, lo)) - log10(lo)) / (log10(hi) - log10(lo))
                return start + t * (to - start)
            }
        }
    }

    // MARK: Text

    static func esc(_ s: String) -> String { HTMLPage.escape(s) }

    /// Coordinates with one decimal.
    static func f(_ v: Double) -> String {
        guard v.isFinite else { return "0" }
        let r = (v * 10).rounded() / 10
        return r == r.rounded() ? String(Int(r)) : String(r)
    }

    /// 1234 → "1,234"; 1.5e6 → "1.5M"; small values with up to two decimals.
    static func number(_ v: Double) -> String {
        guard v.isFinite else { return "-" }
        let a = abs(v)
        if a >= 1e9 { return trim(v / 1e9) + "G" }
        if a >= 1e6 { return trim(v / 1e6) + "M" }
        if a >= 1e4 { return trim(v / 1e3) + "k" }
        if a >= 100 || v == v.rounded() { return String(Int(v.rounded())) }
        return trim(v)
    }

    private static func trim(_ v: Double) -> String {
        let r = (v * 100).rounded() / 100
        return r == r.rounded() ? String(Int(r)) : String(r)
    }
}
