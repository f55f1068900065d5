package report

import (
	"fmt"
	"html"
	"strings"
)

// doc is the report as a list of blocks, rendered twice: to Markdown and to
// one self-contained HTML file.
type doc struct{ blocks []block }

type blockKind int

const (
	bH1 blockKind = iota
	bH2
	bH3
	bPara
	bList
	bTable
	bChart
	bPre
)

type block struct {
	kind  blockKind
	text  string
	items []string
	head  []string
	rows  [][]tcell
	chart chart
}

// tcell is a table cell; class "pass" or "fail" colours it in HTML and
// prefixes a mark in Markdown.
type tcell struct {
	text  string
	class string
}

func (d *doc) h1(s string) { d.blocks = append(d.blocks, block{kind: bH1, text: s}) }
func (d *doc) h2(s string) { d.blocks = append(d.blocks, block{kind: bH2, text: s}) }
func (d *doc) h3(s string) { d.blocks = append(d.blocks, block{kind: bH3, text: s}) }
func (d *doc) p(f string, a ...any) {
	d.blocks = append(d.blocks, block{kind: bPara, text: fmt.Sprintf(f, a...)})
}
func (d *doc) list(items ...string) { d.blocks = append(d.blocks, block{kind: bList, items: items}) }
func (d *doc) pre(s string)         { d.blocks = append(d.blocks, block{kind: bPre, text: s}) }
func (d *doc) chart(c chart)        { d.blocks = append(d.blocks, block{kind: bChart, chart: c}) }
func (d *doc) table(h []string, r [][]tcell) {
	d.blocks = append(d.blocks, block{kind: bTable, head: h, rows: r})
}

func plain(s string) tcell { return tcell{text: s} }

func (d *doc) markdown() string {
	var b strings.Builder
	for _, bl := range d.blocks {
		switch bl.kind {
		case bH1:
			fmt.Fprintf(&b, "# %s\n\n", bl.text)
		case bH2:
			fmt.Fprintf(&b, "## %s\n\n", bl.text)
		case bH3:
			fmt.Fprintf(&b, "### %s\n\n", bl.text)
		case bPara:
			fmt.Fprintf(&b, "%s\n\n", bl.text)
		case bList:
			for _, it := range bl.items {
				fmt.Fprintf(&b, "- %s\n", it)
			}
			b.WriteString("\n")
		case bPre:
			fmt.Fprintf(&b, "```\n%s\n```\n\n", strings.TrimRight(bl.text, "\n"))
		case bChart:
			fmt.Fprintf(&b, "*Chart: %s (see report.html).*\n\n", bl.chart.Title)
		case bTable:
			b.WriteString("| " + strings.Join(bl.head, " | ") + " |\n|")
			for range bl.head {
				b.WriteString("---|")
			}
			b.WriteString("\n")
			for _, r := range bl.rows {
				var cs []string
				for _, c := range r {
					t := strings.ReplaceAll(strings.ReplaceAll(c.text, "|", "\\|"), "\n", "<br>")
					switch c.class {
					case "pass":
						t = "✅ " + t
					case "fail":
						t = "❌ " + t
					}
					cs = append(cs, t)
				}
				b.WriteString("| " + strings.Join(cs, " | ") + " |\n")
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

const css = `body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:0.5em 0 1.2em;font-size:13px}th,td{border:1px solid #ccc;padding:4px 7px;vertical-align:top;text-align:left}
th{background:#f3f3f3}td.pass{background:#e3f6e3}td.fail{background:#fbe0e0}pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}
h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.8em}svg{margin:0.3em 1em 0.8em 0;border:1px solid #eee}`

func (d *doc) html() string {
	var b strings.Builder
	title := "lockd compare report"
	b.WriteString("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>" + title + "</title><style>" + css + "</style></head><body>\n")
	esc := html.EscapeString
	for _, bl := range d.blocks {
		switch bl.kind {
		case bH1:
			fmt.Fprintf(&b, "<h1>%s</h1>\n", esc(bl.text))
		case bH2:
			fmt.Fprintf(&b, "<h2>%s</h2>\n", esc(bl.text))
		case bH3:
			fmt.Fprintf(&b, "<h3>%s</h3>\n", esc(bl.text))
		case bPara:
			fmt.Fprintf(&b, "<p>%s</p>\n", mdInline(esc(bl.text)))
		case bList:
			b.WriteString("<ul>")
			for _, it := range bl.items {
				fmt.Fprintf(&b, "<li>%s</li>", mdInline(esc(it)))
			}
			b.WriteString("</ul>\n")
		case bPre:
			fmt.Fprintf(&b, "<pre>%s</pre>\n", esc(bl.text))
		case bChart:
			b.WriteString(bl.chart.svg() + "\n")
		case bTable:
			b.WriteString("<table><tr>")
			for _, h := range bl.head {
				fmt.Fprintf(&b, "<th>%s</th>", esc(h))
			}
			b.WriteString("</tr>\n")
			for _, r := range bl.rows {
				b.WriteString("<tr>")
				for _, c := range r {
					cls := ""
					if c.class != "" {
						cls = ` class="` + c.class + `"`
					}
					fmt.Fprintf(&b, "<td%s>%s</td>", cls, strings.ReplaceAll(mdInline(esc(c.text)), "\n", "<br>"))
				}
				b.WriteString("</tr>\n")
			}
			b.WriteString("</table>\n")
		}
	}
	b.WriteString("</body></html>\n")
	return b.String()
}

// mdInline turns **bold** and `code` of already escaped text into HTML.
func mdInline(s string) string {
	for _, m := range []struct{ mark, open, close string }{{"**", "<b>", "</b>"}, {"`", "<code>", "</code>"}} {
		for {
			i := strings.Index(s, m.mark)
			if i < 0 {
				break
			}
			j := strings.Index(s[i+len(m.mark):], m.mark)
			if j < 0 {
				break
			}
			j += i + len(m.mark)
			s = s[:i] + m.open + s[i+len(m.mark):j] + m.close + s[j+len(m.mark):]
		}
	}
	return s
}
