// biome-ignore-all lint/suspicious/noExplicitAny: rendered manifests and dashboard JSON are read loosely, after schema validation.
import { spawnSync } from 'node:child_process';
import { appendFileSync, cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { type K8sObject, kustomize, only, ROOT, selects, validateObject } from './k8s.ts';

/**
 * k8s/: the base and both overlays render with `kubectl kustomize`, every object passes the
 * Kubernetes schema, and the rendered objects have the security, probe, scaling, network and
 * config properties the operations issue asks for. The ConfigMap's gateway.yaml passes the
 * gateway's own `validate` with exactly the environment the Deployment provides.
 */

const tmp = mkdtempSync(join(tmpdir(), 'phantom-k8s-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const OVERLAYS = {
  dev: { namespace: 'phantom-gateway-dev', objects: kustomize(join(ROOT, 'k8s/overlays/dev')) },
  production: { namespace: 'phantom-gateway', objects: kustomize(join(ROOT, 'k8s/overlays/production')) },
};
type Overlay = keyof typeof OVERLAYS;

const SECRET_ENV = /SECRET|TOKEN|PASSWORD|PASSWD|CACHE_KEY|PRIVATE|CREDENTIAL|REDIS_URL/i;

function gateway(objects: K8sObject[]): K8sObject {
  return only(objects, 'Deployment', 'phantom-gateway');
}
function gatewayContainer(objects: K8sObject[]) {
  const containers = gateway(objects).spec.template.spec.containers;
  expect(containers).toHaveLength(1);
  return containers[0];
}
/** The ConfigMap the gateway mounts, and its gateway.yaml. */
function gatewayConfig(objects: K8sObject[]): { map: K8sObject; text: string; config: Record<string, any> } {
  const volume = gateway(objects).spec.template.spec.volumes.find((v: any) => v.name === 'config');
  const map = only(objects, 'ConfigMap', volume.configMap.name);
  const text = map.data['gateway.yaml'] as string;
  return { map, text, config: parse(text) };
}
/** A named container port → its number. */
function portNumber(container: any, port: string | number): number {
  if (typeof port === 'number') return port;
  const found = container.ports.find((p: any) => p.name === port);
  if (found === undefined) throw new Error(`no container port named ${port}`);
  return found.containerPort;
}

describe('k8s/base', () => {
  it('renders on its own, and every object passes the Kubernetes schema', () => {
    const objects = kustomize(join(ROOT, 'k8s/base'));
    for (const o of objects) validateObject(o);
    expect(objects.map((o) => o.kind).sort()).toEqual([
      'ConfigMap',
      'Deployment',
      'HorizontalPodAutoscaler',
      'NetworkPolicy',
      'PodDisruptionBudget',
      'Service',
      'Service',
      'ServiceAccount',
    ]);
  });

  it('ships no Secret and no secret value', () => {
    const objects = kustomize(join(ROOT, 'k8s/base'));
    expect(objects.filter((o) => o.kind === 'Secret')).toEqual([]);
    for (const env of gatewayContainer(objects).env) {
      expect(env.value, env.name).toBeUndefined();
      expect(env.valueFrom.secretKeyRef.name).toBe('phantom-gateway-secrets');
    }
  });
});

describe('schema validation', () => {
  it('rejects a deliberately broken object (so the validation can fail)', () => {
    const broken = structuredClone(gateway(OVERLAYS.production.objects));
    delete broken.spec.template.spec.containers[0].name;
    broken.spec.template.spec.containers[0].ports[0].containerPort = 'eighty';
    expect(() => validateObject(broken)).toThrow(/must have required property name/);
    expect(() => validateObject(broken)).toThrow(/containerPort must be integer/);

    const badHpa = structuredClone(only(OVERLAYS.production.objects, 'HorizontalPodAutoscaler'));
    badHpa.spec.maxReplicas = 'ten';
    delete badHpa.spec.scaleTargetRef.kind;
    expect(() => validateObject(badHpa)).toThrow(/maxReplicas must be integer/);
    expect(() => validateObject(badHpa)).toThrow(/scaleTargetRef must have required property kind/);
  });

  it('refuses a kind it has no schema for instead of skipping it', () => {
    expect(() =>
      validateObject({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }),
    ).toThrow(/no schema for example.com\/v1 Widget/);
  });
});

describe.each(Object.keys(OVERLAYS) as Overlay[])('k8s/overlays/%s', (name) => {
  const { namespace, objects } = OVERLAYS[name];

  it('renders, and every object passes the Kubernetes schema', () => {
    expect(objects.length).toBeGreaterThan(5);
    for (const o of objects) validateObject(o);
  });

  it('puts every object in the overlay namespace, which enforces the restricted Pod Security Standard', () => {
    const ns = only(objects, 'Namespace');
    expect(ns.metadata.name).toBe(namespace);
    expect(ns.metadata.labels['pod-security.kubernetes.io/enforce']).toBe('restricted');
    for (const o of objects.filter((o) => o.kind !== 'Namespace')) {
      expect(o.metadata.namespace, `${o.kind} ${o.metadata.name}`).toBe(namespace);
    }
  });

  it('runs every container as non-root, read-only, without privilege escalation or capabilities', () => {
    for (const d of objects.filter((o) => o.kind === 'Deployment')) {
      const pod = d.spec.template.spec;
      expect(pod.automountServiceAccountToken, d.metadata.name).toBe(false);
      expect(pod.securityContext.runAsNonRoot).toBe(true);
      expect(pod.securityContext.runAsUser).toBeGreaterThan(0);
      expect(pod.securityContext.seccompProfile.type).toBe('RuntimeDefault');
      for (const c of pod.containers) {
        expect(c.securityContext.readOnlyRootFilesystem, c.name).toBe(true);
        expect(c.securityContext.allowPrivilegeEscalation, c.name).toBe(false);
        expect(c.securityContext.capabilities.drop, c.name).toEqual(['ALL']);
        expect(c.securityContext.privileged ?? false).toBe(false);
        for (const kind of ['requests', 'limits']) {
          expect(c.resources[kind].cpu, `${c.name} ${kind}.cpu`).toBeDefined();
          expect(c.resources[kind].memory, `${c.name} ${kind}.memory`).toBeDefined();
        }
      }
    }
    const sa = only(objects, 'ServiceAccount', 'phantom-gateway');
    expect(sa.automountServiceAccountToken).toBe(false);
    expect(gateway(objects).spec.template.spec.serviceAccountName).toBe('phantom-gateway');
  });

  it('probes the admin port: /livez for startup and liveness, /readyz for readiness', () => {
    const c = gatewayContainer(objects);
    const { config } = gatewayConfig(objects);
    expect(portNumber(c, 'admin')).toBe(9090);
    expect(config.admin).toMatchObject({ host: '0.0.0.0', port: 9090 });
    expect(portNumber(c, 'http')).toBe(8080);
    expect(config.listen).toMatchObject({ host: '0.0.0.0', port: 8080 });
    for (const [probe, path] of [
      ['startupProbe', '/livez'],
      ['livenessProbe', '/livez'],
      ['readinessProbe', '/readyz'],
    ] as const) {
      expect(c[probe].httpGet.path, probe).toBe(path);
      expect(portNumber(c, c[probe].httpGet.port), probe).toBe(9090);
    }
  });

  it('drains: preStop sleep, then SIGTERM with shutdownGraceSeconds, inside terminationGracePeriodSeconds', () => {
    const c = gatewayContainer(objects);
    const { config } = gatewayConfig(objects);
    const command: string[] = c.lifecycle.preStop.exec.command;
    expect(command[0]).toBe('sleep');
    const preStop = Number(command[1]);
    expect(preStop).toBeGreaterThan(0);
    const grace = gateway(objects).spec.template.spec.terminationGracePeriodSeconds;
    expect(grace).toBeGreaterThan(preStop + (config.shutdownGraceSeconds ?? 10));
  });

  it('spreads pods over zones and nodes', () => {
    const d = gateway(objects);
    const spread = d.spec.template.spec.topologySpreadConstraints;
    expect(spread.map((s: any) => s.topologyKey).sort()).toEqual([
      'kubernetes.io/hostname',
      'topology.kubernetes.io/zone',
    ]);
    for (const s of spread)
      expect(selects(s.labelSelector.matchLabels, d.spec.template.metadata.labels)).toBe(true);
  });

  it('mounts the generated ConfigMap as a directory, and the checksum annotation names its content hash', () => {
    const d = gateway(objects);
    const { map } = gatewayConfig(objects);
    expect(map.metadata.name).toMatch(/^phantom-gateway-config-[a-z0-9]{10}$/);
    expect(d.spec.template.metadata.annotations['phantom-gateway/config-checksum']).toBe(map.metadata.name);
    const mount = gatewayContainer(objects).volumeMounts.find((m: any) => m.name === 'config');
    expect(mount).toEqual({ name: 'config', mountPath: '/etc/phantom-gateway', readOnly: true });
    expect(gatewayContainer(objects).args).toEqual([
      'serve',
      '--config',
      '/etc/phantom-gateway/gateway.yaml',
    ]);
    const tmpMount = gatewayContainer(objects).volumeMounts.find((m: any) => m.mountPath === '/tmp');
    const tmpVolume = d.spec.template.spec.volumes.find((v: any) => v.name === tmpMount.name);
    expect(tmpVolume.emptyDir).toBeDefined();
  });

  it('reads every secret from the Secret phantom-gateway-secrets, never from a literal value', () => {
    const env: any[] = gatewayContainer(objects).env;
    const names = env.map((e) => e.name).sort();
    const redis = name === 'production' ? 'REDIS_PASSWORD' : 'REDIS_URL';
    expect(names).toEqual(
      ['INTROSPECTION_CLIENT_SECRET', 'PHANTOM_ADMIN_TOKEN', 'PHANTOM_CACHE_KEY', redis].sort(),
    );
    for (const e of env) {
      expect(e.value, e.name).toBeUndefined();
      expect(e.valueFrom.secretKeyRef.name).toMatch(/^phantom-gateway-secrets(-[a-z0-9]{10})?$/);
      expect(e.valueFrom.secretKeyRef.key).toBe(e.name);
    }
    for (const d of objects.filter((o) => o.kind === 'Deployment')) {
      for (const c of d.spec.template.spec.containers) {
        for (const e of c.env ?? []) if (SECRET_ENV.test(e.name)) expect(e.value, e.name).toBeUndefined();
      }
    }
  });

  it('exposes the public port through a LoadBalancer and the admin port through a ClusterIP Service', () => {
    const podLabels = gateway(objects).spec.template.metadata.labels;
    const c = gatewayContainer(objects);
    const pub = only(objects, 'Service', 'phantom-gateway');
    expect(pub.spec.type).toBe('LoadBalancer');
    expect(pub.spec.ports).toHaveLength(1);
    expect(pub.spec.ports[0].port).toBe(80);
    expect(portNumber(c, pub.spec.ports[0].targetPort)).toBe(8080);
    expect(selects(pub.spec.selector, podLabels)).toBe(true);

    const admin = only(objects, 'Service', 'phantom-gateway-admin');
    expect(admin.spec.type).toBe('ClusterIP');
    expect(admin.spec.ports).toHaveLength(1);
    expect(admin.spec.ports[0].port).toBe(9090);
    expect(portNumber(c, admin.spec.ports[0].targetPort)).toBe(9090);
    expect(selects(admin.spec.selector, podLabels)).toBe(true);
  });

  it('limits traffic: public port from anywhere, admin port from monitoring, egress to DNS and labelled peers', () => {
    const policy = only(objects, 'NetworkPolicy', 'phantom-gateway');
    expect(selects(policy.spec.podSelector.matchLabels, gateway(objects).spec.template.metadata.labels)).toBe(
      true,
    );
    expect(policy.spec.policyTypes.sort()).toEqual(['Egress', 'Ingress']);

    const ingress: any[] = policy.spec.ingress;
    const publicRule = ingress.find((r) => r.ports.some((p: any) => p.port === 8080));
    expect(publicRule.from).toBeUndefined();
    const adminRule = ingress.find((r) => r.ports.some((p: any) => p.port === 9090));
    expect(adminRule.from).toEqual([
      { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } },
    ]);
    expect(ingress).toHaveLength(2);

    const egress: any[] = policy.spec.egress;
    // No rule opens egress to everything: each names its peers.
    for (const rule of egress) expect(rule.to?.length, JSON.stringify(rule)).toBeGreaterThan(0);
    const dns = egress.find((r) => r.ports?.some((p: any) => p.port === 53));
    expect(dns.ports.map((p: any) => p.protocol).sort()).toEqual(['TCP', 'UDP']);
    const peers = JSON.stringify(egress);
    for (const label of [
      'phantom-gateway/token-service',
      'phantom-gateway/redis',
      'phantom-gateway/upstream',
    ]) {
      expect(peers).toContain(label);
    }
  });

  it('has a PodDisruptionBudget over the gateway pods that keeps pods up during drains', () => {
    const pdb = only(objects, 'PodDisruptionBudget', 'phantom-gateway');
    expect(selects(pdb.spec.selector.matchLabels, gateway(objects).spec.template.metadata.labels)).toBe(true);
    if (pdb.spec.maxUnavailable !== undefined) expect(pdb.spec.maxUnavailable).toBe(1);
    else expect(pdb.spec.minAvailable).toBeGreaterThanOrEqual(2);
  });

  it('pins every image by version tag or digest, never latest', () => {
    for (const d of objects.filter((o) => o.kind === 'Deployment')) {
      for (const c of d.spec.template.spec.containers) {
        expect(c.image, c.name).toMatch(
          /^[\w.\-/]+(:[\w.-]*\d[\w.-]*)(@sha256:[a-f0-9]{64})?$|@sha256:[a-f0-9]{64}$/,
        );
        expect(c.image).not.toMatch(/:latest(@|$)/);
      }
    }
  });

  it("passes the gateway's own `validate` with exactly the environment the Deployment provides", () => {
    const { text, config } = gatewayConfig(objects);
    const file = join(tmp, `${name}-gateway.yaml`);
    writeFileSync(file, text);
    const env: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
    const secret = objects.find((o) => o.kind === 'Secret');
    for (const e of gatewayContainer(objects).env) {
      // dev: the values of the generated dev Secret; production: stand-ins of the right shape.
      const fromSecret = secret?.data?.[e.valueFrom.secretKeyRef.key];
      if (secret !== undefined) expect(fromSecret, `${e.name} in the generated Secret`).toBeDefined();
      env[e.name] =
        fromSecret !== undefined
          ? Buffer.from(fromSecret, 'base64').toString('utf8')
          : `stand-in-${e.name}-0123456789abcdef`;
    }
    const run = spawnSync(join(ROOT, 'bin/phantom-gateway'), ['validate', '--config', file], {
      env,
      encoding: 'utf8',
      timeout: 15_000,
    });
    expect(run.stderr).not.toMatch(/written literally/);
    expect({ status: run.status, stdout: run.stdout }).toEqual({
      status: 0,
      stdout: `${file}: configuration is valid (${config.routes.length} routes)\n`,
    });
  });
});

describe('k8s/overlays/dev specifics', () => {
  const { objects } = OVERLAYS.dev;

  it('runs one gateway replica without an HPA, and one pinned Redis with a Service', () => {
    expect(gateway(objects).spec.replicas).toBe(1);
    expect(objects.filter((o) => o.kind === 'HorizontalPodAutoscaler')).toEqual([]);
    const redis = only(objects, 'Deployment', 'redis');
    expect(redis.spec.replicas).toBe(1);
    const c = redis.spec.template.spec.containers[0];
    expect(c.image).toMatch(/^redis:7\.\d+\.\d+/);
    const svc = only(objects, 'Service', 'redis');
    expect(svc.spec.type).toBe('ClusterIP');
    expect(svc.spec.ports[0].port).toBe(6379);
    expect(selects(svc.spec.selector, redis.spec.template.metadata.labels)).toBe(true);
    // The gateway's NetworkPolicy lets it reach this Redis.
    expect(redis.spec.template.metadata.labels['phantom-gateway/redis']).toBe('true');
  });

  it('generates a dev-only Secret with obviously fake values, REDIS_URL pointing at the dev Redis', () => {
    const secret = only(objects, 'Secret');
    expect(secret.metadata.name).toMatch(/^phantom-gateway-secrets-[a-z0-9]{10}$/);
    const refs = gatewayContainer(objects).env.map((e: any) => e.valueFrom.secretKeyRef);
    for (const ref of refs) expect(ref.name).toBe(secret.metadata.name);
    expect(Object.keys(secret.data).sort()).toEqual(refs.map((r: any) => r.key).sort());
    const values = Object.fromEntries(
      Object.entries(secret.data as Record<string, string>).map(([k, v]) => [
        k,
        Buffer.from(v, 'base64').toString(),
      ]),
    );
    expect(values.REDIS_URL).toBe('redis://redis:6379/0');
    for (const [k, v] of Object.entries(values)) if (k !== 'REDIS_URL') expect(v, k).toMatch(/^dev-only-/);
    expect(values.PHANTOM_CACHE_KEY!.length).toBeGreaterThanOrEqual(32);
  });
});

describe('k8s/overlays/production specifics', () => {
  const { objects } = OVERLAYS.production;

  it('autoscales 3 or more replicas on CPU and on requests per second per pod', () => {
    const hpa = only(objects, 'HorizontalPodAutoscaler', 'phantom-gateway');
    expect(hpa.spec.scaleTargetRef).toEqual({
      apiVersion: 'apps/v1',
      kind: 'Deployment',
      name: 'phantom-gateway',
    });
    expect(hpa.spec.minReplicas).toBeGreaterThanOrEqual(3);
    expect(hpa.spec.maxReplicas).toBeGreaterThan(hpa.spec.minReplicas);
    expect(hpa.spec.maxReplicas).toBeLessThanOrEqual(100);
    const cpu = hpa.spec.metrics.find((m: any) => m.type === 'Resource');
    expect(cpu.resource.name).toBe('cpu');
    expect(cpu.resource.target.averageUtilization).toBeGreaterThan(0);
    expect(cpu.resource.target.averageUtilization).toBeLessThanOrEqual(90);
    const rps = hpa.spec.metrics.find((m: any) => m.type === 'Pods');
    expect(rps.pods.metric.name).toBe('phantom_gateway_requests_per_second');
    // The HPA owns the replica count; a `kubectl apply` must not reset it.
    expect(gateway(objects).spec.replicas).toBeUndefined();
  });

  it('uses Redis Sentinel, with the password from the Secret, and ships no Secret', () => {
    const { config } = gatewayConfig(objects);
    expect(config.cache.redis.url).toBeUndefined();
    expect(config.cache.redis.sentinels.length).toBeGreaterThanOrEqual(3);
    expect(config.cache.redis.name).toEqual(expect.any(String));
    expect(config.cache.redis.password).toBe('${REDIS_PASSWORD}');
    expect(objects.filter((o) => o.kind === 'Secret')).toEqual([]);
  });

  it('renders with a registry image', () => {
    expect(gatewayContainer(objects).image).toMatch(
      /^registry\.example\.com\/phantom-gateway:\d+\.\d+\.\d+$/,
    );
  });
});

describe('config checksum', () => {
  it('changes the pod template annotation (and the ConfigMap name) when gateway.yaml changes', () => {
    const copy = join(tmp, 'k8s');
    cpSync(join(ROOT, 'k8s'), copy, { recursive: true });
    const before = gateway(OVERLAYS.production.objects).spec.template.metadata.annotations;
    appendFileSync(join(copy, 'overlays/production/gateway.yaml'), '# changed\n');
    const after = kustomize(join(copy, 'overlays/production'));
    const annotation = gateway(after).spec.template.metadata.annotations['phantom-gateway/config-checksum'];
    expect(annotation).not.toBe(before['phantom-gateway/config-checksum']);
    expect(annotation).toBe(gatewayConfig(after).map.metadata.name);
    // The dev overlay's own config is untouched, so its checksum stays.
    const dev = kustomize(join(copy, 'overlays/dev'));
    expect(gateway(dev).spec.template.metadata.annotations).toEqual(
      gateway(OVERLAYS.dev.objects).spec.template.metadata.annotations,
    );
  });
});
