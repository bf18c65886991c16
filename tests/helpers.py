"""Shared test helpers (not collected by pytest)."""

import os

SVG_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:cc="http://creativecommons.org/ns#"
     width="{w}" height="{h}">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:subject><rdf:Bag>{tags}</rdf:Bag></dc:subject>
  </cc:Work></rdf:RDF></metadata>
  <rect x="2" y="2" width="{rw}" height="{rh}" fill="{color}"/>
  <circle cx="{cx}" cy="{cy}" r="{r}" fill="#203040"/>
</svg>
"""

COLORS = ["#ff0000", "#00aa00", "#0000ff", "#ffaa00", "#aa00ff", "#00aaaa"]


def svg(tags, i=0, w=40, h=30):
    """A small valid SVG with ``<dc:subject>`` tags; ``i`` varies the drawing (and its hash)."""
    return SVG_TEMPLATE.format(
        w=w, h=h, rw=w - 4 - i % 7, rh=h - 4 - (i // 7) % 5, color=COLORS[i % len(COLORS)],
        cx=5 + i % 17, cy=5 + i % 11, r=2 + i % 4,
        tags="".join(f"<rdf:li>{t}</rdf:li>" for t in tags))


# Tags that all have GloVe vectors.
TAG_SETS = [["cat", "animal"], ["dog", "animal"], ["car", "vehicle"], ["tree", "plant"],
            ["flower", "plant"], ["house", "building"], ["bird", "animal"], ["truck", "vehicle"]]


def make_clipart_tree(root, n=48, broken=True):
    """Write a tiny openclipart-like tree; returns the list of written paths.

    With ``broken``: one empty file, one malformed XML file, one drawing that
    cairosvg cannot render (``fill-opacity:100%``) and one
    byte-identical duplicate under another category.
    """
    paths = []
    for i in range(n):
        cat = ["animals", "objects", "plants"][i % 3]
        d = os.path.join(root, cat)
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"img_{i:03d}.svg")
        with open(p, "w") as f:
            f.write(svg(TAG_SETS[i % len(TAG_SETS)], i))
        paths.append(p)
    if broken:
        os.makedirs(os.path.join(root, "broken"), exist_ok=True)
        open(os.path.join(root, "broken", "empty.svg"), "w").close()
        with open(os.path.join(root, "broken", "malformed.svg"), "w") as f:
            f.write("<svg><metadata><unclosed></svg")
        with open(os.path.join(root, "broken", "norender.svg"), "w") as f:
            # cairosvg cannot parse a percentage opacity (as in several real openclipart files)
            f.write(svg(["cat", "animal"], 999).replace('fill="#203040"', 'style="fill-opacity:100%"'))
        os.makedirs(os.path.join(root, "zcopy"), exist_ok=True)
        with open(paths[0]) as src, open(os.path.join(root, "zcopy", "dup.svg"), "w") as dst:
            dst.write(src.read())
    return paths
