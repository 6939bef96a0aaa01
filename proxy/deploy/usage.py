"""What the command prints at the end: how to call the deployment, ready to paste."""

from __future__ import annotations

from proxy.deploy.plan import PROXY_API_KEY, PROXY_PORT, Plan

__all__ = ["usage_text"]


def usage_text(plan: Plan, *, service_url: str | None = None) -> str:
    """Snippets for a UbiOps request, a streamed request, the OpenAI-compatible endpoint, and
    (when enabled) the forwarded port and the service. They read the token from the
    environment; no secret is written out."""
    o = plan.options
    chat = next((m.configured_as for m in plan.catalog if not m.is_embedding), None)
    embedding = next((m.configured_as for m in plan.catalog if m.is_embedding), None)
    prefix = f"ubiops-deployment/{o.deployment}/{o.version}/"
    model = chat or embedding or ""
    lines = [
        "",
        "How to call it (set UBIOPS_API_TOKEN first; it may carry the 'Token ' prefix):",
        "",
        "# A UbiOps request (the body is the OpenAI JSON, sent as plain text)",
        "import json, os, ubiops",
        'token = os.environ["UBIOPS_API_TOKEN"].removeprefix("Token ")',
        f'configuration = ubiops.Configuration(host="{o.api_host}")',
        'configuration.api_key["Authorization"] = "Token " + token',
        "api = ubiops.CoreApi(ubiops.ApiClient(configuration))",
        f'body = {{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}',
        "result = api.deployment_version_requests_create(",
        f'    "{o.project}", "{o.deployment}", "{o.version}", json.dumps(body)',
        ")",
        "print(result.result)",
        "",
        "# A streamed request",
        "for chunk in ubiops.utils.stream_deployment_request(",
        f'    api.api_client, "{o.project}", "{o.deployment}", version="{o.version}",',
        '    data=json.dumps(body | {"stream": True}),',
        "):",
        '    print(json.loads(chunk)["choices"][0]["delta"].get("content", ""), end="")',
        "",
        "# The OpenAI-compatible endpoint",
        "from openai import OpenAI",
        "client = OpenAI(",
        "    api_key=token,",
        f'    base_url="{o.api_host}/projects/{o.project}/openai-compatible/v1/",',
        ")",
    ]
    if chat:
        lines += [
            "reply = client.chat.completions.create(",
            f'    model="{prefix}{chat}",',
            '    messages=[{"role": "user", "content": "Hello"}],',
            ")",
        ]
    if embedding:
        lines += [
            "vectors = client.embeddings.create(",
            f'    model="{prefix}{embedding}", input="Hello"',
            ")",
        ]
    lines.append("print([m.id for m in client.models.list()])  # from the openai-model-names label")
    for port in plan.ports:
        lines += [
            "",
            f"# Forwarded port: {port.public_port}/{port.protocol} on the instance's public IP "
            f"-> proxy port {port.deployment_port}",
            "# (the IP is shown with the running instance in the UbiOps UI; the proxy requires "
            f"{PROXY_API_KEY})",
            f'OpenAI(base_url="http://<instance-ip>:{port.public_port}/v1", '
            f"api_key=<{PROXY_API_KEY}>)",
        ]
    if plan.service is not None:
        url = service_url or f"<the URL of service {plan.service.name}>"
        lines += [
            "",
            f"# Service {plan.service.name}: {url} -> proxy port {PROXY_PORT}",
            "# UbiOps checks the token (and does not pass it on); the proxy checks x-api-key",
            "direct = OpenAI(",
            f'    base_url="{url}/v1",',
            f"    api_key=<{PROXY_API_KEY}>,",
            '    default_headers={"Authorization": "Token " + token, '
            f'"x-api-key": <{PROXY_API_KEY}>}},',
            ")",
        ]
    return "\n".join(lines)
