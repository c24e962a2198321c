package main

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"strings"
)

// A line chart drawn with the standard library only: axes with ticks, one
// polyline per series (solid or dashed, with markers), an optional
// horizontal reference line and a legend. Text uses the small bitmap font
// below.

type chartSeries struct {
	label  string
	color  color.RGBA
	dashed bool
	xs, ys []float64
}

type chartSpec struct {
	title, xLabel, yLabel string
	// logX puts x on a log2 scale (node counts 1, 2, 4, ...).
	logX   bool
	series []chartSeries
	// hline, when positive, is drawn across the plot and labelled.
	hline      float64
	hlineLabel string
	w, h       int
}

var (
	chartBG    = color.RGBA{255, 255, 255, 255}
	chartInk   = color.RGBA{40, 40, 40, 255}
	chartGrid  = color.RGBA{225, 225, 225, 255}
	chartIdeal = color.RGBA{130, 130, 130, 255}
)

// modeColor is the colour of a mode's lines.
func modeColor(mode string) color.RGBA {
	switch mode {
	case modeDirect:
		return color.RGBA{214, 39, 40, 255}
	case modePullThrough:
		return color.RGBA{255, 127, 14, 255}
	default:
		return color.RGBA{31, 119, 180, 255}
	}
}

const fontScale = 2

// drawChart renders spec.
func drawChart(spec chartSpec) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, spec.w, spec.h))
	fill(img, img.Bounds(), chartBG)
	left, right, top, bottom := 90, spec.w-300, 60, spec.h-80

	// Data ranges.
	xmin, xmax := math.Inf(1), math.Inf(-1)
	ymax := spec.hline
	for _, s := range spec.series {
		for i := range s.xs {
			x := s.xs[i]
			if spec.logX {
				x = math.Log2(x)
			}
			xmin, xmax = math.Min(xmin, x), math.Max(xmax, x)
			ymax = math.Max(ymax, s.ys[i])
		}
	}
	if math.IsInf(xmin, 0) {
		xmin, xmax = 0, 1
	}
	if xmax-xmin < 1e-9 {
		xmin, xmax = xmin-1, xmax+1
	}
	ystep := niceStep(ymax / 6)
	if ystep <= 0 {
		ystep = 1
	}
	ytop := math.Ceil(ymax/ystep) * ystep
	if ytop < ymax*1.05 {
		ytop += ystep
	}
	px := func(x float64) int {
		if spec.logX {
			x = math.Log2(x)
		}
		return left + int(math.Round((x-xmin)/(xmax-xmin)*float64(right-left)))
	}
	py := func(y float64) int { return bottom - int(math.Round(y/ytop*float64(bottom-top))) }

	// Grid and y ticks.
	for y := 0.0; y <= ytop+ystep/2; y += ystep {
		yy := py(y)
		hlineAt(img, left, right, yy, chartGrid)
		hlineAt(img, left-6, left, yy, chartInk)
		lbl := trimFloat(y)
		drawText(img, left-10-textWidth(lbl), yy-3*fontScale, lbl, chartInk)
	}
	// x ticks at every distinct x.
	seen := map[float64]bool{}
	for _, s := range spec.series {
		for _, x := range s.xs {
			if seen[x] {
				continue
			}
			seen[x] = true
			xx := px(x)
			vlineAt(img, xx, top, bottom, chartGrid)
			vlineAt(img, xx, bottom, bottom+6, chartInk)
			lbl := trimFloat(x)
			drawText(img, xx-textWidth(lbl)/2, bottom+12, lbl, chartInk)
		}
	}
	// Axes.
	hlineAt(img, left, right, bottom, chartInk)
	vlineAt(img, left, top, bottom, chartInk)
	drawText(img, (left+right-textWidth(spec.xLabel))/2, bottom+40, spec.xLabel, chartInk)
	drawText(img, 10, top-30, spec.yLabel, chartInk)
	drawText(img, (spec.w-textWidth(spec.title))/2, 12, spec.title, chartInk)

	if spec.hline > 0 {
		yy := py(spec.hline)
		for x := left; x <= right; x++ {
			if (x/6)%2 == 0 {
				img.Set(x, yy, chartIdeal)
			}
		}
		drawText(img, right+8, yy-3*fontScale, spec.hlineLabel, chartIdeal)
	}

	// Series.
	for _, s := range spec.series {
		for i := range s.xs {
			x, y := px(s.xs[i]), py(s.ys[i])
			if i > 0 {
				drawLine(img, px(s.xs[i-1]), py(s.ys[i-1]), x, y, s.color, s.dashed)
			}
			marker(img, x, y, s.color, s.dashed)
		}
	}

	// Legend.
	ly := top + 10
	for _, s := range spec.series {
		lx := right + 20
		drawLine(img, lx, ly+3*fontScale, lx+36, ly+3*fontScale, s.color, s.dashed)
		marker(img, lx+18, ly+3*fontScale, s.color, s.dashed)
		drawText(img, lx+46, ly, s.label, chartInk)
		ly += 12 * fontScale
	}
	return img
}

// niceStep rounds raw up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 0
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.SetRGBA(x, y, c)
		}
	}
}

func hlineAt(img *image.RGBA, x0, x1, y int, c color.RGBA) {
	for x := x0; x <= x1; x++ {
		img.SetRGBA(x, y, c)
	}
}

func vlineAt(img *image.RGBA, x, y0, y1 int, c color.RGBA) {
	for y := y0; y <= y1; y++ {
		img.SetRGBA(x, y, c)
	}
}

// drawLine draws a 3-pixel-wide line (Bresenham), dashed in runs of 8.
func drawLine(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA, dashed bool) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for step := 0; step < 100000; step++ {
		if !dashed || (step/8)%2 == 0 {
			for ox := -1; ox <= 1; ox++ {
				for oy := -1; oy <= 1; oy++ {
					if ox == 0 || oy == 0 {
						img.SetRGBA(x0+ox, y0+oy, c)
					}
				}
			}
		}
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

// marker draws a filled square (p50) or a hollow one (dashed series, p99).
func marker(img *image.RGBA, x, y int, c color.RGBA, hollow bool) {
	for ox := -4; ox <= 4; ox++ {
		for oy := -4; oy <= 4; oy++ {
			edge := abs(ox) >= 3 || abs(oy) >= 3
			switch {
			case edge:
				img.SetRGBA(x+ox, y+oy, c)
			case hollow:
				img.SetRGBA(x+ox, y+oy, chartBG)
			default:
				img.SetRGBA(x+ox, y+oy, c)
			}
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}

func textWidth(s string) int { return len([]rune(s)) * 6 * fontScale }

// drawText writes s (upper-cased) with its top-left corner at x, y.
func drawText(img *image.RGBA, x, y int, s string, c color.RGBA) {
	for _, r := range strings.ToUpper(s) {
		g, ok := glyphs[r]
		if !ok {
			g = glyphs['?']
		}
		for row, bits := range g {
			for col := range 5 {
				if bits&(1<<(4-col)) == 0 {
					continue
				}
				for sy := range fontScale {
					for sx := range fontScale {
						img.SetRGBA(x+col*fontScale+sx, y+row*fontScale+sy, c)
					}
				}
			}
		}
		x += 6 * fontScale
	}
}

// glyphs is a 5x7 bitmap font: seven rows of five bits each.
var glyphs = map[rune][7]uint8{
	' ': {},
	'A': {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},
	'B': {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E},
	'C': {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E},
	'D': {0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E},
	'E': {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F},
	'F': {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10},
	'G': {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F},
	'H': {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11},
	'I': {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E},
	'J': {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C},
	'K': {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11},
	'L': {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F},
	'M': {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11},
	'N': {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11},
	'O': {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},
	'P': {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10},
	'Q': {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D},
	'R': {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11},
	'S': {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E},
	'T': {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04},
	'U': {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E},
	'V': {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04},
	'W': {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A},
	'X': {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11},
	'Y': {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04},
	'Z': {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F},
	'0': {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E},
	'1': {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E},
	'2': {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F},
	'3': {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E},
	'4': {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02},
	'5': {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E},
	'6': {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E},
	'7': {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08},
	'8': {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E},
	'9': {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C},
	'.': {0, 0, 0, 0, 0, 0x0C, 0x0C},
	',': {0, 0, 0, 0, 0x0C, 0x04, 0x08},
	'-': {0, 0, 0, 0x1F, 0, 0, 0},
	'+': {0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0},
	'(': {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02},
	')': {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08},
	'/': {0, 0x01, 0x02, 0x04, 0x08, 0x10, 0},
	':': {0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0},
	'=': {0, 0, 0x1F, 0, 0x1F, 0, 0},
	'%': {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03},
	'?': {0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04},
}

// encodeChart encodes img as PNG.
func encodeChart(img image.Image) ([]byte, error) {
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func writeChartFile(path string, img image.Image) error {
	b, err := encodeChart(img)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
