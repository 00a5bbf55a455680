# A Chorus node: `node dist/main.mjs`, the bundle scripts/build.mjs makes from src/
# (decision 0023). Configuration comes from the environment; see docker-compose.yml.
FROM node:20-slim

WORKDIR /app
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000

# Dependencies first, for layer caching. `npm install`, not `npm ci` (see
# /work/shared/STACK.md); dev dependencies (vitest, typescript…) are not needed to run.
COPY package.json package-lock.json ./
RUN npm install --omit=dev --no-audit --no-fund \
 && npm cache clean --force

COPY tsconfig.json ./
COPY src ./src
COPY scripts/build.mjs ./scripts/build.mjs
RUN node scripts/build.mjs

USER node
EXPOSE 3000
STOPSIGNAL SIGTERM

# node:20-slim has no curl: probe /healthz with Node itself.
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s --retries=5 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/healthz',{signal:AbortSignal.timeout(2500)}).then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))"]

# A larger young generation: half the scavenges under load (docs/decisions/0019).
CMD ["node", "--max-semi-space-size=64", "dist/main.mjs"]
