// The API docs page: Swagger UI over the server's own OpenAPI document. With tokens
// configured the document and "Try it out" need one (any role reads the document): the
// page sends the token the dashboard keeps (the same local storage entry), one given as
// /docs?token=..., or one typed in the header.
"use strict";

const params = new URLSearchParams(location.search);
if (params.get("token")) localStorage.setItem("weir.token", params.get("token"));
const token = () => localStorage.getItem("weir.token") || "";
const specPath = document.getElementById("swagger-ui").dataset.openapi;

document.getElementById("token-form").onsubmit = (e) => {
  e.preventDefault();
  localStorage.setItem("weir.token", document.getElementById("token-input").value.trim());
  location.reload();
};

window.ui = SwaggerUIBundle({
  url: specPath,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  requestInterceptor: (req) => {
    if (token() && !req.headers.Authorization) req.headers.Authorization = "Bearer " + token();
    return req;
  },
  responseInterceptor: (res) => {
    const forSpec = new URL(res.url, location.href).pathname === specPath;
    if (forSpec && (res.status === 401 || res.status === 403)) {
      document.getElementById("token-note").hidden = false;
    }
    return res;
  },
});
