// Node.js interop client for the Nethical mesh: talks to a region node and a coordinator
// with @grpc/grpc-js, from the repository's .proto files only (no generated code), and the
// standard grpc.health.v1 contract as shipped by the grpc-health-check package.
//
//   node client.mjs --region 127.0.0.1:P --coordinator 127.0.0.1:Q [--protos DIR]
//       [--metric NAME] [--count N] [--deadline-ms MS] [--wait-s S]
//
// Steps: health Check on both servers (overall and per service; each must be SERVING),
// Ingest the values 1..N into METRIC in two batches, Evaluate one benign and one harmful
// action on the region node, then poll the coordinator's GetGlobalMetrics until the region
// has answered and the count is N. Prints ONE JSON document on stdout. Every call carries a
// deadline; any failure prints a line on stderr and exits with status 1.

import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import health from 'grpc-health-check';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));

const REGION_SERVICE = 'nethical_grpc.v1.RegionNodeService';
const COORDINATOR_SERVICE = 'nethical_grpc.v1.CoordinatorService';
const BENIGN_ACTION = {
  action_text: 'SELECT title FROM books WHERE id = 42',
  action_type: 'query',
  stated_intent: 'look up a book title',
  request_id: 'node-benign',
};
const HARMFUL_ACTION = {
  action_text: 'DROP TABLE users;',
  action_type: 'command',
  stated_intent: 'free some disk space',
  request_id: 'node-harmful',
};

// Field names as in the .proto files; 64-bit integers as decimal strings (the proto3 JSON
// mapping); enums by name; unset scalars filled with their defaults.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

class ClientError extends Error {}

const OPTIONS = {
  region: { type: 'string' },
  coordinator: { type: 'string' },
  protos: { type: 'string', default: path.resolve(here, '..', '..', 'protos') },
  metric: { type: 'string', default: 'interop_latency_ms' },
  count: { type: 'string', default: '1000' },
  'deadline-ms': { type: 'string', default: '5000' },
  'wait-s': { type: 'string', default: '10' },
};

function parseOptions(argv) {
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: OPTIONS, strict: true }));
  } catch (err) {
    throw new ClientError(err.message);
  }
  if (!values.region || !values.coordinator) {
    throw new ClientError('--region HOST:PORT and --coordinator HOST:PORT are required');
  }
  const count = Number(values.count);
  const deadlineMs = Number(values['deadline-ms']);
  const waitS = Number(values['wait-s']);
  if (!Number.isInteger(count) || count < 2) {
    throw new ClientError(`--count must be an integer >= 2, got ${values.count}`);
  }
  if (!(deadlineMs > 0) || !(waitS > 0)) {
    throw new ClientError('--deadline-ms and --wait-s must be positive');
  }
  return { ...values, count, deadlineMs, waitS };
}

function loadServices(protosDir) {
  const mesh = grpc.loadPackageDefinition(
    protoLoader.loadSync(
      ['nethical_grpc/v1/region_node.proto', 'nethical_grpc/v1/coordinator.proto'],
      { ...LOADER_OPTIONS, includeDirs: [protosDir] },
    ),
  );
  const healthPackage = grpc.loadPackageDefinition(
    protoLoader.loadSync(health.protoPath, LOADER_OPTIONS),
  );
  return {
    RegionNodeService: mesh.nethical_grpc.v1.RegionNodeService,
    CoordinatorService: mesh.nethical_grpc.v1.CoordinatorService,
    Health: healthPackage.grpc.health.v1.Health,
  };
}

function deadline(ms) {
  return new Date(Date.now() + ms);
}

function describeError(label, err) {
  const code = err.code !== undefined ? ` ${grpc.status[err.code] ?? err.code}` : '';
  return new ClientError(`${label} failed:${code} ${err.details ?? err.message}`);
}

function unary(client, method, request, deadlineMs) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline(deadlineMs) }, (err, response) => {
      if (err) reject(describeError(method, err));
      else resolve(response);
    });
  });
}

function clientStream(client, method, requests, deadlineMs) {
  return new Promise((resolve, reject) => {
    const call = client[method]({ deadline: deadline(deadlineMs) }, (err, response) => {
      if (err) reject(describeError(method, err));
      else resolve(response);
    });
    for (const request of requests) call.write(request);
    call.end();
  });
}

async function checkHealth(healthClient, services, deadlineMs) {
  const statuses = {};
  for (const service of services) {
    const { status } = await unary(healthClient, 'Check', { service }, deadlineMs);
    if (status !== 'SERVING') {
      throw new ClientError(`health of "${service}" is ${status}, not SERVING`);
    }
    statuses[service] = status;
  }
  return statuses;
}

async function ingest(regionClient, metric, count, deadlineMs) {
  // 1..count as two columnar batches of one series (packed doubles on the wire).
  const values = Array.from({ length: count }, (_, i) => i + 1);
  const half = Math.floor(count / 2);
  const labels = { client: 'node' };
  const batches = [values.slice(0, half), values.slice(half)].map((part) => ({
    metric,
    labels,
    values: part,
  }));
  const response = await clientStream(regionClient, 'Ingest', batches, deadlineMs);
  return {
    metric,
    labels,
    sent_batches: batches.length,
    sent_values: values.length,
    accepted_batches: Number(response.accepted_batches),
    accepted_values: Number(response.accepted_values),
  };
}

async function evaluate(regionClient, action, deadlineMs) {
  const requestId = action.request_id;
  const request = { action: { agent_id: 'node-interop-agent', ...action } };
  const { evaluation } = await unary(regionClient, 'Evaluate', request, deadlineMs);
  if (evaluation === null || evaluation.request_id !== requestId) {
    throw new ClientError(`Evaluate did not echo request_id ${requestId}`);
  }
  return evaluation;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function pollGlobal(coordinatorClient, series, regionId, count, deadlineMs, waitS) {
  const { metric, labels } = series;
  const request = {
    metrics: [metric],
    label_filter: labels,
    group_by_labels: Object.keys(labels),
    quantiles: [0.5, 0.99],
    include_region_breakdown: true,
    region_timeout: { seconds: 2, nanos: 0 },
  };
  const giveUp = Date.now() + waitS * 1000;
  let last = null;
  for (let polls = 1; ; polls += 1) {
    last = await unary(coordinatorClient, 'GetGlobalMetrics', request, deadlineMs);
    const result = last.results.find((r) => r.metric === metric);
    const answered = last.coverage !== null && last.coverage.regions_answered.includes(regionId);
    if (answered && result && Number(result.statistics.count) === count) {
      return { polls, result, coverage: last.coverage, computed_at: last.computed_at };
    }
    if (Date.now() > giveUp) {
      throw new ClientError(
        `GetGlobalMetrics did not cover ${regionId} with ${count} values within ${waitS}s; ` +
          `last answer: ${JSON.stringify(last)}`,
      );
    }
    await sleep(100);
  }
}

function statisticsOut(statistics) {
  return {
    count: Number(statistics.count),
    sum: statistics.sum,
    mean: statistics.mean,
    min: statistics.min,
    max: statistics.max,
    stddev: statistics.stddev,
    relative_error: statistics.relative_error,
    quantiles: statistics.quantiles.map((q) => ({ quantile: q.quantile, value: q.value })),
  };
}

async function run(options) {
  const services = loadServices(options.protos);
  const credentials = grpc.credentials.createInsecure();
  const clients = {
    regionHealth: new services.Health(options.region, credentials),
    coordinatorHealth: new services.Health(options.coordinator, credentials),
    region: new services.RegionNodeService(options.region, credentials),
    coordinator: new services.CoordinatorService(options.coordinator, credentials),
  };
  try {
    const ms = options.deadlineMs;
    const healthOut = {
      region: await checkHealth(clients.regionHealth, ['', REGION_SERVICE], ms),
      coordinator: await checkHealth(clients.coordinatorHealth, ['', COORDINATOR_SERVICE], ms),
    };
    const ingestOut = await ingest(clients.region, options.metric, options.count, ms);
    const benign = await evaluate(clients.region, BENIGN_ACTION, ms);
    const harmful = await evaluate(clients.region, HARMFUL_ACTION, ms);
    const regionId = benign.region_id;
    const listed = await unary(clients.coordinator, 'ListRegions', {}, ms);
    const global = await pollGlobal(
      clients.coordinator,
      ingestOut,
      regionId,
      options.count,
      ms,
      options.waitS,
    );
    return {
      client: {
        node: process.version,
        grpc_js: require('@grpc/grpc-js/package.json').version,
        proto_loader: require('@grpc/proto-loader/package.json').version,
      },
      health: healthOut,
      ingest: ingestOut,
      evaluate: { benign, harmful },
      regions: listed.regions.map((r) => ({
        region_id: r.region_id,
        healthy: r.healthy,
        instances: r.instances.map((i) => ({ instance_id: i.instance_id, health: i.health })),
      })),
      global: {
        metric: global.result.metric,
        labels: global.result.labels,
        statistics: statisticsOut(global.result.statistics),
        regions: global.result.regions.map((r) => ({
          region_id: r.region_id,
          statistics: statisticsOut(r.statistics),
        })),
        coverage: global.coverage,
        computed_at: global.computed_at,
        polls: global.polls,
      },
    };
  } finally {
    for (const client of Object.values(clients)) client.close();
  }
}

try {
  const options = parseOptions(process.argv.slice(2));
  const document = await run(options);
  process.stdout.write(`${JSON.stringify(document, null, 2)}\n`);
} catch (err) {
  process.stderr.write(`interop client: ${err instanceof ClientError ? err.message : err.stack}\n`);
  process.exitCode = 1;
}
