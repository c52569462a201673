// shoprec storefront demo: plain JavaScript over the storefront service's own endpoints.
// A demo shopper (an anonymous session kept in sessionStorage) browses the catalogue:
//   click a product  -> POST /events (view) -> POST /recently_viewed + POST /next_items
//   "Add to cart"    -> POST /events (cart) -> POST /cart_addons
// The page sends ?key=... as the x-api-key header when the service requires one.
"use strict";

(function () {
  const PAGE_SIZE = 48;
  const CATALOG_SIZE = 500;
  const SESSION_KEY = "shoprec-demo-session";
  const CART_KEY = "shoprec-demo-cart";
  const apiKey = new URLSearchParams(window.location.search).get("key");

  const $ = (id) => document.getElementById(id);
  const state = {
    session: null,
    cart: [],
    catalog: new Map(), // item_id -> {item_id, rank, category?, price?, count?}
    order: [], // item ids, most popular first
    shown: 0,
    pending: 0,
  };

  // --- helpers --------------------------------------------------------------------------------
  function newId(prefix) {
    const rand = window.crypto && window.crypto.randomUUID
      ? window.crypto.randomUUID().replace(/-/g, "").slice(0, 12)
      : Math.random().toString(36).slice(2, 14);
    return prefix + rand;
  }

  function busy(delta) {
    state.pending += delta;
    document.body.dataset.pending = String(state.pending);
  }

  function showError(message) {
    const box = $("status");
    box.textContent = message;
    box.hidden = !message;
  }

  async function call(method, path, body) {
    const headers = { "content-type": "application/json" };
    if (apiKey) headers["x-api-key"] = apiKey;
    busy(+1);
    try {
      const response = await fetch(path, {
        method: method,
        headers: headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      let data = null;
      try {
        data = await response.json();
      } catch (_) {
        data = null;
      }
      if (!response.ok) {
        const detail = data && data.error ? data.error : response.statusText;
        throw new Error(path + ": " + response.status + " " + detail);
      }
      return data;
    } finally {
      busy(-1);
    }
  }

  const post = (path, body) => call("POST", path, body);

  function hue(text) {
    // FNV-1a, then golden-angle steps: neighbouring names ("cat1", "cat2") get distant hues.
    let h = 2166136261;
    for (let i = 0; i < text.length; i++) {
      h ^= text.charCodeAt(i);
      h = Math.imul(h, 16777619) >>> 0;
    }
    return Math.round((h % 1000) * 137.508) % 360;
  }

  function thumb(itemId) {
    const info = state.catalog.get(itemId) || {};
    const el = document.createElement("div");
    el.className = "thumb";
    const h = hue(info.category || itemId);
    el.style.background = "linear-gradient(135deg, hsl(" + h + ", 55%, 52%), hsl(" +
      ((h + 40) % 360) + ", 60%, 38%))";
    el.textContent = itemId.slice(-4).toUpperCase();
    el.setAttribute("aria-hidden", "true");
    return el;
  }

  function text(tag, className, value) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    el.textContent = value;
    return el;
  }

  function button(label, onClick, className) {
    const el = text("button", className || "", label);
    el.type = "button";
    el.addEventListener("click", (event) => {
      event.stopPropagation();
      onClick();
    });
    return el;
  }

  function price(info) {
    return typeof info.price === "number" ? info.price.toFixed(2) : null;
  }

  function ago(iso) {
    const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 60) return "just now";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.round(seconds / 3600) + " h ago";
    return Math.round(seconds / 86400) + " d ago";
  }

  function guarded(task) {
    return task().then(
      () => showError(""),
      (err) => showError(String(err.message || err)),
    );
  }

  // --- the shopper ----------------------------------------------------------------------------
  function loadShopper() {
    state.session = sessionStorage.getItem(SESSION_KEY);
    if (!state.session) {
      state.session = newId("demo-");
      sessionStorage.setItem(SESSION_KEY, state.session);
    }
    try {
      state.cart = JSON.parse(sessionStorage.getItem(CART_KEY) || "[]");
    } catch (_) {
      state.cart = [];
    }
    $("session-id").textContent = state.session;
  }

  function saveCart() {
    sessionStorage.setItem(CART_KEY, JSON.stringify(state.cart));
  }

  function event(itemId, type) {
    const info = state.catalog.get(itemId) || {};
    const e = { event_id: newId("ev-"), session_id: state.session, item_id: itemId, event_type: type };
    if (info.category) e.category = info.category;
    if (typeof info.price === "number") e.price = info.price;
    if (type === "cart") e.quantity = 1;
    return e;
  }

  // --- actions --------------------------------------------------------------------------------
  async function view(itemId) {
    await post("/events", { events: [event(itemId, "view")] });
    document.querySelectorAll('.product[data-item="' + CSS.escape(itemId) + '"]')
      .forEach((el) => el.classList.add("viewed"));
    await Promise.all([refreshRecentlyViewed(), refreshRecommendations()]);
  }

  async function addToCart(itemId) {
    await post("/events", { events: [event(itemId, "cart")] });
    if (!state.cart.includes(itemId)) state.cart.push(itemId);
    saveCart();
    renderCart();
    await Promise.all([refreshAddons(), refreshRecommendations()]);
  }

  async function removeFromCart(itemId) {
    state.cart = state.cart.filter((x) => x !== itemId);
    saveCart();
    renderCart();
    await refreshAddons();
  }

  // --- rendering ------------------------------------------------------------------------------
  async function refreshRecentlyViewed() {
    const data = await post("/recently_viewed", { session_id: state.session, limit: 12 });
    const list = $("recently-viewed");
    list.replaceChildren();
    for (const row of data.items) {
      const li = document.createElement("li");
      li.dataset.item = row.item_id;
      li.title = "view " + row.item_id + " again";
      li.append(thumb(row.item_id), text("span", "name", row.item_id),
        text("span", "when", ago(row.viewed_at)));
      li.addEventListener("click", () => guarded(() => view(row.item_id)));
      list.append(li);
    }
  }

  function recommendationRow(rec) {
    const info = state.catalog.get(rec.item_id) || {};
    const li = document.createElement("li");
    li.dataset.item = rec.item_id;
    const middle = document.createElement("div");
    const name = text("div", "name", rec.item_id);
    name.addEventListener("click", () => guarded(() => view(rec.item_id)));
    const details = [info.category, price(info)].filter(Boolean).join(" · ");
    middle.append(name, text("div", "reason" + (rec.fallback ? " fallback" : ""),
      rec.reason + (details ? "  ·  " + details : "")));
    li.append(thumb(rec.item_id), middle,
      button("Add to cart", () => guarded(() => addToCart(rec.item_id)), "ghost"));
    return li;
  }

  async function refreshRecommendations() {
    const data = await post("/next_items", { session_id: state.session, k: 8 });
    $("recommendations").replaceChildren(...data.items.map(recommendationRow));
    $("recs-note").textContent = data.fallback
      ? "Popular right now: view a product to get picks for you."
      : "Picked for this session, with the reason for each.";
  }

  function renderCart() {
    $("cart-count").textContent = String(state.cart.length);
    $("cart").replaceChildren(...state.cart.map((itemId) => {
      const li = document.createElement("li");
      li.dataset.item = itemId;
      li.append(text("span", "name", itemId),
        button("Remove", () => guarded(() => removeFromCart(itemId)), "ghost"));
      return li;
    }));
  }

  async function refreshAddons() {
    const list = $("cart-addons");
    if (!state.cart.length) {
      list.replaceChildren();
      return;
    }
    const data = await post("/cart_addons", {
      cart_items: state.cart, session_id: state.session, k: 6,
    });
    list.replaceChildren(...data.items.map(recommendationRow));
  }

  function productCard(itemId) {
    const info = state.catalog.get(itemId) || {};
    const card = document.createElement("article");
    card.className = "product";
    card.dataset.item = itemId;
    card.tabIndex = 0;
    card.setAttribute("role", "button");
    card.setAttribute("aria-label", "view " + itemId);
    const body = document.createElement("div");
    body.className = "body";
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.append(text("span", "category", info.category || "#" + info.rank));
    const p = price(info);
    if (p !== null) meta.append(text("span", "price", p));
    body.append(text("div", "name", itemId), meta,
      button("Add to cart", () => guarded(() => addToCart(itemId))));
    card.append(thumb(itemId), body);
    card.addEventListener("click", () => guarded(() => view(itemId)));
    card.addEventListener("keydown", (e) => {
      if (e.key === "Enter") guarded(() => view(itemId));
    });
    return card;
  }

  function showMore() {
    const next = state.order.slice(state.shown, state.shown + PAGE_SIZE);
    $("product-grid").append(...next.map(productCard));
    state.shown += next.length;
    const more = $("show-more");
    if (more) more.hidden = state.shown >= state.order.length;
  }

  async function loadCatalog() {
    const data = await call("GET", "catalog?limit=" + CATALOG_SIZE);
    state.catalog = new Map(data.items.map((row) => [row.item_id, row]));
    state.order = data.items.map((row) => row.item_id);
    $("model-info").textContent = "model " + (data.model || "?") + " · " + data.n_items +
      " items" + (data.churn ? " · churn model loaded" : "");
    $("product-grid").replaceChildren();
    state.shown = 0;
    showMore();
    if (state.order.length > PAGE_SIZE && !$("show-more")) {
      const more = button("Show more products", showMore, "ghost");
      more.id = "show-more";
      $("product-grid").after(more);
    }
  }

  async function refreshAll() {
    renderCart();
    await Promise.all([refreshRecentlyViewed(), refreshRecommendations(), refreshAddons()]);
  }

  function newShopper() {
    sessionStorage.removeItem(SESSION_KEY);
    sessionStorage.removeItem(CART_KEY);
    loadShopper();
    document.querySelectorAll(".product.viewed").forEach((el) => el.classList.remove("viewed"));
    return refreshAll();
  }

  async function start() {
    loadShopper();
    $("new-shopper").addEventListener("click", () => guarded(newShopper));
    await loadCatalog();
    await refreshAll();
    document.body.dataset.ready = "1";
  }

  guarded(start);
})();
