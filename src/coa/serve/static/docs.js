// The API description at /docs: reads /openapi.json from this server and lays it out as plain
// HTML. Nothing is fetched from anywhere else, and every text of the schema is set as text.
"use strict";

(function () {
  const METHODS = ["get", "post", "put", "patch", "delete"];

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of [].concat(children || [])) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function refName(ref) {
    return String(ref).split("/").pop();
  }

  function anchor(text) {
    return String(text).replace(/[^A-Za-z0-9_-]/g, "-");
  }

  // A schema's type in a few words, with a link for a named schema: "integer, ≥ 1", "array of Message".
  function typeOf(schema) {
    if (!schema || typeof schema !== "object") return el("span", { class: "type" }, "any");
    if (schema.$ref) {
      const name = refName(schema.$ref);
      return el("a", { href: "#schema-" + anchor(name), class: "type" }, name);
    }
    const alternatives = schema.anyOf || schema.oneOf;
    if (alternatives) {
      const span = el("span", { class: "type" });
      alternatives.forEach((alternative, i) => {
        if (i) span.appendChild(document.createTextNode(" | "));
        span.appendChild(typeOf(alternative));
      });
      return span;
    }
    let text = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || (schema.enum ? "" : "any");
    if (schema.enum) text = (text ? text + ": " : "") + schema.enum.map((v) => JSON.stringify(v)).join(", ");
    if (schema.const !== undefined) text = JSON.stringify(schema.const);
    const bounds = [];
    if (schema.minimum !== undefined) bounds.push("≥ " + schema.minimum);
    if (schema.exclusiveMinimum !== undefined) bounds.push("> " + schema.exclusiveMinimum);
    if (schema.maximum !== undefined) bounds.push("≤ " + schema.maximum);
    if (schema.exclusiveMaximum !== undefined) bounds.push("< " + schema.exclusiveMaximum);
    if (schema.minItems !== undefined) bounds.push("at least " + schema.minItems);
    if (schema.format) bounds.push(schema.format);
    const span = el("span", { class: "type" }, text + (bounds.length ? ", " + bounds.join(", ") : ""));
    if (schema.type === "array" && schema.items) {
      span.appendChild(document.createTextNode(" of "));
      span.appendChild(typeOf(schema.items));
    }
    return span;
  }

  function fieldsTable(schema) {
    const properties = schema && schema.properties;
    if (!properties) return el("p", {}, typeOf(schema));
    const required = new Set(schema.required || []);
    const rows = Object.entries(properties).map(([name, field]) => el("tr", {}, [
      el("td", {}, [el("code", {}, name), required.has(name) ? el("span", { class: "required" }, " required") : null]),
      el("td", {}, typeOf(field)),
      el("td", {}, field.default !== undefined ? el("code", {}, JSON.stringify(field.default)) : ""),
      el("td", {}, field.description || ""),
    ]));
    return el("table", {}, [el("thead", {}, el("tr", {}, ["field", "type", "default", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)]);
  }

  function operation(path, method, op) {
    const id = "op-" + anchor(method + path);
    const parts = [el("h2", {}, [el("span", { class: "method" }, method.toUpperCase()), el("span", { class: "path" }, path)])];
    if (op.summary) parts.push(el("p", {}, op.summary));
    if (op.description) parts.push(el("p", { class: "description" }, op.description));
    if (op.parameters && op.parameters.length) {
      parts.push(el("h3", {}, "Parameters"));
      parts.push(el("table", {}, el("tbody", {}, op.parameters.map((p) => el("tr", {}, [
        el("td", {}, [el("code", {}, p.name), p.required ? el("span", { class: "required" }, " required") : null]),
        el("td", {}, p.in), el("td", {}, typeOf(p.schema)), el("td", {}, p.description || ""),
      ])))));
    }
    const content = op.requestBody && op.requestBody.content;
    if (content) {
      for (const [media, body] of Object.entries(content)) {
        parts.push(el("h3", {}, "Body: " + media));
        parts.push(fieldsTable(body.schema));
      }
    }
    if (op.responses) {
      parts.push(el("h3", {}, "Replies"));
      parts.push(el("table", {}, el("tbody", {}, Object.entries(op.responses).map(([status, reply]) => {
        const schema = reply.content && reply.content["application/json"] && reply.content["application/json"].schema;
        return el("tr", {}, [el("td", {}, el("code", {}, status)), el("td", {}, reply.description || ""),
          el("td", {}, schema ? typeOf(schema) : "")]);
      }))));
    }
    return el("article", { id: id, class: "panel operation" }, parts);
  }

  function render(api) {
    const index = document.getElementById("docs-index");
    const operations = document.getElementById("docs-operations");
    const schemas = document.getElementById("docs-schemas");
    const list = el("ul");
    for (const [path, item] of Object.entries(api.paths || {})) {
      for (const method of METHODS) {
        if (!item[method]) continue;
        const op = item[method];
        operations.appendChild(operation(path, method, op));
        list.appendChild(el("li", {}, el("a", { href: "#op-" + anchor(method + path) },
          [el("span", { class: "method" }, method.toUpperCase()), el("span", { class: "path" }, path)])));
      }
    }
    index.appendChild(el("h2", {}, (api.info && api.info.title ? api.info.title + " " : "") + "operations"));
    index.appendChild(list);
    const named = (api.components && api.components.schemas) || {};
    for (const [name, schema] of Object.entries(named)) {
      schemas.appendChild(el("article", { id: "schema-" + anchor(name), class: "panel" }, [
        el("h2", {}, name), schema.description ? el("p", { class: "description" }, schema.description) : null,
        fieldsTable(schema)]));
    }
  }

  fetch("/openapi.json", { credentials: "same-origin" })
    .then((response) => {
      if (!response.ok) throw new Error("/openapi.json answered HTTP " + response.status);
      return response.json();
    })
    .then(render)
    .catch((e) => { document.getElementById("docs-error").textContent = String(e.message || e); });
})();
