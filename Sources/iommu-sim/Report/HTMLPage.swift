/// One self-contained HTML page: inline CSS, inline SVG plots (`SVGPlot`), no network, no
/// fonts to fetch. Its one script only checks the page: on load it writes into
/// `<pre id="check">` whether every `svg.plot` drew (a non-empty box and at least one data
/// mark) and any script error, which the headless-browser test reads (Tests/Browser).
struct HTMLPage {
    var title: String
    private var body: [String] = []

    init(title: String) { self.title = title }

    /// Text for HTML content or attribute values.
    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for ch in s {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(ch)
            }
        }
        return out
    }

    mutating func heading(_ text: String, level: Int = 2) {
        let l = min(max(level, 1), 6)
        body.append("<h\(l)>\(Self.escape(text))</h\(l)>")
    }

    mutating func paragraph(_ text: String) { body.append("<p>\(Self.escape(text))</p>") }

    /// A table of text cells (the first row is the header); numeric-looking cells align right.
    mutating func table(_ header: [String], _ rows: [[String]]) {
        var t = "<table><thead><tr>" + header.map { "<th>\(Self.escape($0))</th>" }.joined() + "</tr></thead><tbody>"
        for r in rows {
            t += "<tr>" + r.map { c in
                let numeric = c.first.map { $0.isNumber || $0 == "-" } ?? false
                return numeric ? "<td class=\"n\">\(Self.escape(c))</td>" : "<td>\(Self.escape(c))</td>"
            }.joined() + "</tr>"
        }
        body.append(t + "</tbody></table>")
    }

    /// An SVG the plot functions made (already escaped).
    mutating func figure(_ svg: String, caption: String) {
        body.append("<figure>\(svg)<figcaption>\(Self.escape(caption))</figcaption></figure>")
    }

    func render() -> String {
        """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(Self.escape(title))</title>
        <style>
        body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1320px; color: #1d2330; background: #fff; }
        h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
        p { max-width: 1000px; line-height: 1.4; }
        table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
        th, td { border: 1px solid #d5d9e0; padding: 3px 8px; } th { background: #f1f3f7; text-align: left; }
        td.n { text-align: right; font-variant-numeric: tabular-nums; }
        figure { display: inline-block; margin: 8px 16px 16px 0; vertical-align: top; }
        figcaption { font-size: 12px; color: #555; max-width: 640px; }
        svg.plot { background: #fff; border: 1px solid #e3e6eb; }
        svg.plot text { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; fill: #1d2330; }
        #check { font-size: 11px; color: #777; }
        </style>
        <script>
        window.plotErrors = [];
        window.addEventListener('error', function (e) { window.plotErrors.push(String(e.message)); });
        window.addEventListener('load', function () {
          var plots = document.querySelectorAll('svg.plot'), lines = [], ok = plots.length > 0;
          for (var i = 0; i < plots.length; i++) {
            var s = plots[i], b = s.getBBox(), marks = s.querySelectorAll('.mark').length;
            var good = b.width > 0 && b.height > 0 && marks > 0;
            if (!good) ok = false;
            lines.push((s.id || ('plot' + i)) + ': ' + (good ? 'drawn' : 'EMPTY') + ', ' + marks + ' marks, box ' + Math.round(b.width) + 'x' + Math.round(b.height));
          }
          if (window.plotErrors.length) ok = false;
          document.getElementById('check').textContent = (ok ? 'PLOTS-OK ' : 'PLOTS-FAILED ') + plots.length + ' plots\\n' + lines.join('\\n') +
            (window.plotErrors.length ? '\\nscript errors: ' + window.plotErrors.join('; ') : '');
        });
        </script>
        </head>
        <body>
        <h1>\(Self.escape(title))</h1>
        \(body.joined(separator: "\n"))
        <pre id="check">page check did not run</pre>
        </body>
        </html>

        """
    }
}
