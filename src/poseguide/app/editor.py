"""The keypoint editor: an SVG of the COCO-17 joints and limbs whose joints can be dragged.

Gradio has no skeleton editor, so this is a ``gr.HTML`` component with a few lines of JavaScript
(no library, nothing fetched). Its value is a keypoint JSON string in the layout of
:mod:`poseguide.pose.io` (``{"width", "height", "people": [{"keypoints": [51 numbers]}]}``), in the
pixels of the pose's own canvas (the photo's size, or :data:`~poseguide.app.core.DEFAULT_CANVAS`).

* Python -> page: setting the component's value (a photo's estimated pose, an uploaded JSON file,
  the default pose) redraws the SVG (the ``watch('value')`` callback).
* Page -> Python: a drag moves the joint locally on every pointer move; on release the new
  keypoints become the component's value and are sent with a custom ``edit`` event
  (``trigger('edit', {value})``), whose Python handler renders the skeleton image. Sending only on
  release keeps one request per drag, and the ``edit`` event (unlike ``change``) fires only for
  the user's edits, never for values Python set itself.
* A photo's pose comes with the photo (a small JPEG ``data:`` URL under ``"background"``), drawn
  dimmed under the joints; the downloadable JSON never carries it.
* A joint with visibility 0 (not labelled) is drawn hollow and grey; one without coordinates is
  parked in a row along the top. Dragging a hidden joint makes it visible (v = 2); a double click
  toggles a joint between visible and hidden.
  A press and release without a move sends nothing.

The template is constant (it does not use ``${value}``), so Gradio never re-renders it over the
SVG the script draws.
"""

from __future__ import annotations

from poseguide.pose.skeleton import (
    COCO17_LIMBS,
    COCO17_NAMES,
    OPENPOSE18_COLORS,
    OPENPOSE18_FROM_COCO17,
)

EDITOR_TEMPLATE = '<div class="pg-editor" data-testid="pose-editor"></div>'

EDITOR_CSS = """
.pg-editor svg { display: block; width: 100%; max-height: 420px; touch-action: none;
  user-select: none; border-radius: 6px; }
.pg-editor circle { cursor: grab; }
.pg-editor circle.pg-hidden { stroke: #9ca3af; stroke-dasharray: 3 2; }
"""

# The script run once when the component loads. `element`, `props`, `trigger` and `watch` come
# from gr.HTML; `props.limbs`, `props.names` and `props.colors` from editor_props().
EDITOR_JS = r"""
const NS = 'http://www.w3.org/2000/svg';
const N = props.names.length;
const box = element.querySelector('.pg-editor');
const svg = document.createElementNS(NS, 'svg');
box.appendChild(svg);
let pose = {width: 512, height: 512, people: []};
let drag = null;
const DOUBLE_TAP_MS = 400;

function parse(value) {
  let data = {};
  try { data = typeof value === 'string' ? JSON.parse(value || '{}') : (value || {}); }
  catch (err) { data = {}; }
  const people = (data.people || []).map((person) => {
    const k = person.keypoints || [];
    const at = (i) => +k[i] || 0;
    return Array.from({length: N}, (_, j) => [at(3 * j), at(3 * j + 1), at(3 * j + 2)]);
  });
  const bg = data.background;  // the photo, shown under the joints
  const background = typeof bg === 'string' && bg.startsWith('data:image/') ? bg : null;
  return {width: +data.width || 512, height: +data.height || 512, people, background};
}

function serialise() {
  const round = (v) => Math.round(v * 1000) / 1000;
  const out = {width: pose.width, height: pose.height,
    people: pose.people.map((p) => ({keypoints: p.flat().map(round)}))};
  if (pose.background) out.background = pose.background;
  return JSON.stringify(out);
}

function where(p, j) {  // a joint without coordinates is parked along the top edge
  const k = pose.people[p][j];
  if (k[2] > 0 || k[0] !== 0 || k[1] !== 0) return [k[0], k[1]];
  return [pose.width * (j + 1) / (N + 1), pose.height * (0.04 + 0.05 * p)];
}

function add(parent, tag, attrs, title) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (title) {
    const t = document.createElementNS(NS, 'title');
    t.textContent = title;
    node.appendChild(t);
  }
  parent.appendChild(node);
  return node;
}

function draw() {
  const side = Math.max(pose.width, pose.height);
  const r = side / 70, line = side / 110;
  svg.setAttribute('viewBox', `0 0 ${pose.width} ${pose.height}`);
  svg.replaceChildren();
  add(svg, 'rect', {x: 0, y: 0, width: pose.width, height: pose.height, fill: '#000'});
  if (pose.background) {
    add(svg, 'image', {href: pose.background, x: 0, y: 0, width: pose.width,
      height: pose.height, opacity: 0.45, preserveAspectRatio: 'none'});
  }
  pose.people.forEach((person, p) => {
    for (const [a, b] of props.limbs) {
      if (person[a][2] <= 0 || person[b][2] <= 0) continue;
      add(svg, 'line', {x1: person[a][0], y1: person[a][1], x2: person[b][0], y2: person[b][1],
        stroke: props.colors[b], 'stroke-width': line, 'stroke-opacity': 0.7,
        'stroke-linecap': 'round'});
    }
    person.forEach((k, j) => {
      const [x, y] = where(p, j);
      const shown = k[2] > 0;
      add(svg, 'circle', {cx: x, cy: y, r: r, 'data-p': p, 'data-j': j,
        'data-name': props.names[j], class: shown ? 'pg-joint' : 'pg-joint pg-hidden',
        fill: shown ? props.colors[j] : 'none', 'stroke-width': line / 2,
        stroke: shown ? '#fff' : '#9ca3af', 'pointer-events': 'all'},  // hollow ones too
        `person ${p + 1}: ${props.names[j]}${shown ? '' : ' (hidden)'}`);
    });
  });
}

function commit() {
  const value = serialise();
  props.value = value;
  trigger('edit', {value: value});
}

function point(event) {
  const m = svg.getScreenCTM();
  if (!m) return [0, 0];
  const q = new DOMPoint(event.clientX, event.clientY).matrixTransform(m.inverse());
  return [Math.min(Math.max(q.x, 0), pose.width), Math.min(Math.max(q.y, 0), pose.height)];
}

function joint(event) {
  const c = event.target.closest ? event.target.closest('circle[data-j]') : null;
  return c ? {p: +c.dataset.p, j: +c.dataset.j} : null;
}

function toggle(hit) {  // hidden <-> visible; a joint without coordinates keeps its spot
  const k = pose.people[hit.p][hit.j];
  if (k[2] === 0) [k[0], k[1]] = where(hit.p, hit.j);
  k[2] = k[2] > 0 ? 0 : 2;
  draw();
  commit();
}

// Double taps are detected here, not with 'dblclick': under pointer capture the browser's
// click events target the SVG, not the joint.
let lastTap = null;
svg.addEventListener('pointerdown', (event) => {
  const hit = joint(event);
  if (!hit) return;
  event.preventDefault();
  const again = lastTap && lastTap.p === hit.p && lastTap.j === hit.j;
  if (again && event.timeStamp - lastTap.t < DOUBLE_TAP_MS) {
    lastTap = null;
    toggle(hit);
    return;
  }
  lastTap = {p: hit.p, j: hit.j, t: event.timeStamp};
  drag = {p: hit.p, j: hit.j, x0: event.clientX, y0: event.clientY, moved: false};
  svg.setPointerCapture(event.pointerId);
});
svg.addEventListener('pointermove', (event) => {
  if (!drag) return;
  if (!drag.moved && Math.hypot(event.clientX - drag.x0, event.clientY - drag.y0) < 3) return;
  drag.moved = true;  // a click that wobbles a pixel or two is not a drag
  const k = pose.people[drag.p][drag.j];
  [k[0], k[1]] = point(event);
  if (k[2] === 0) k[2] = 2;
  draw();
});
const release = () => {
  if (drag && drag.moved) commit();
  drag = null;
};
svg.addEventListener('pointerup', release);
svg.addEventListener('pointercancel', release);

watch('value', () => { pose = parse(props.value); draw(); });
pose = parse(props.value);
draw();
"""


def _css_rgb(color: tuple[int, int, int]) -> str:
    return "rgb({}, {}, {})".format(*color)


def editor_props() -> dict:
    """The constants the script reads from ``props``: COCO-17 names, limbs and joint colours.

    A joint is drawn in the OpenPose colour of the joint it becomes in the skeleton image, so
    the editor and the rendered pose look alike.
    """
    colors = [""] * len(COCO17_NAMES)
    for openpose, coco in enumerate(OPENPOSE18_FROM_COCO17):
        if coco is not None:
            colors[coco] = _css_rgb(OPENPOSE18_COLORS[openpose])
    return {
        "names": list(COCO17_NAMES),
        "limbs": [list(pair) for pair in COCO17_LIMBS],
        "colors": colors,
    }
