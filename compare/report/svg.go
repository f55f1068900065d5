package report

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Hand-written SVG line charts: no script, no network, no dependency.

type series struct {
	Name string
	Pts  [][2]float64 // (x, y)
}

type chart struct {
	Title, XLabel, YLabel string
	LogX, LogY            bool
	Series                []series
	// YMax, when set, fixes the top of the y axis (1 for a CDF).
	YMax float64
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"}

func (c chart) svg() string {
	const W, H, left, right, top, bottom = 720.0, 340.0, 70.0, 260.0, 30.0, 50.0
	pw, ph := W-left-right, H-top-bottom
	xmin, xmax, ymin, ymax := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range c.Series {
		for _, p := range s.Pts {
			if (c.LogX && p[0] <= 0) || (c.LogY && p[1] <= 0) || math.IsNaN(p[0]) || math.IsNaN(p[1]) {
				continue
			}
			xmin, xmax = math.Min(xmin, p[0]), math.Max(xmax, p[0])
			ymin, ymax = math.Min(ymin, p[1]), math.Max(ymax, p[1])
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">`, W, H, W, H)
	fmt.Fprintf(&b, `<text x="%.0f" y="18" font-size="13" font-weight="bold">%s</text>`, left, html.EscapeString(c.Title))
	if math.IsInf(xmin, 0) {
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">no data</text></svg>`, left+20, top+40)
		return b.String()
	}
	if !c.LogY {
		ymin = 0
	}
	if c.YMax > 0 {
		ymax = c.YMax
	}
	if xmax == xmin {
		xmax, xmin = xmax*1.5+1, xmin*0.5
	}
	if ymax == ymin {
		ymax = ymin*1.5 + 1
	}
	tx := func(x float64) float64 {
		if c.LogX {
			return left + pw*(math.Log10(x)-math.Log10(xmin))/(math.Log10(xmax)-math.Log10(xmin))
		}
		return left + pw*(x-xmin)/(xmax-xmin)
	}
	ty := func(y float64) float64 {
		if c.LogY {
			return top + ph - ph*(math.Log10(y)-math.Log10(ymin))/(math.Log10(ymax)-math.Log10(ymin))
		}
		return top + ph - ph*(y-ymin)/(ymax-ymin)
	}
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#999"/>`, left, top, pw, ph)
	for _, t := range ticks(xmin, xmax, c.LogX) {
		x := tx(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#eee"/>`, x, top, x, top+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`, x, top+ph+14, num(t))
	}
	for _, t := range ticks(ymin, ymax, c.LogY) {
		y := ty(t)
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f" stroke="#eee"/>`, left, y, left+pw, y)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" text-anchor="end">%s</text>`, left-4, y+4, num(t))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">%s</text>`, left+pw/2, H-8, html.EscapeString(c.XLabel))
	fmt.Fprintf(&b, `<text x="14" y="%.0f" text-anchor="middle" transform="rotate(-90 14 %.0f)">%s</text>`, top+ph/2, top+ph/2, html.EscapeString(c.YLabel))
	for i, s := range c.Series {
		col := palette[i%len(palette)]
		var pts []string
		for _, p := range s.Pts {
			if (c.LogX && p[0] <= 0) || (c.LogY && p[1] <= 0) {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", tx(p[0]), ty(math.Min(p[1], ymax))))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`, col, strings.Join(pts, " "))
		for _, p := range pts {
			xy := strings.Split(p, ",")
			fmt.Fprintf(&b, `<circle cx="%s" cy="%s" r="2.5" fill="%s"/>`, xy[0], xy[1], col)
		}
		ly := top + 10 + float64(i)*16
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f" stroke="%s" stroke-width="3"/>`, left+pw+10, ly, left+pw+28, ly, col)
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%s</text>`, left+pw+32, ly+4, html.EscapeString(s.Name))
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// ticks: powers of ten on a log axis, about five round steps on a linear one.
func ticks(lo, hi float64, log bool) []float64 {
	var out []float64
	if log {
		mults := []float64{1}
		if math.Log10(hi/lo) < 3 {
			mults = []float64{1, 2, 5}
		}
		for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
			for _, m := range mults {
				if v := m * math.Pow(10, e); v >= lo*0.999 && v <= hi*1.001 {
					out = append(out, v)
				}
			}
		}
		if len(out) < 2 {
			out = append([]float64{lo}, append(out, hi)...)
		}
		return out
	}
	step := math.Pow(10, math.Floor(math.Log10((hi-lo)/5)))
	for _, m := range []float64{1, 2, 5, 10} {
		if (hi-lo)/(step*m) <= 6 {
			step *= m
			break
		}
	}
	for v := math.Ceil(lo/step) * step; v <= hi*1.0001; v += step {
		out = append(out, v)
	}
	return out
}

func num(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", math.Round(v/1e5)/10)
	case v >= 1e3:
		return fmt.Sprintf("%gk", math.Round(v/1e2)/10)
	case v >= 1:
		return fmt.Sprintf("%g", math.Round(v*100)/100)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}
