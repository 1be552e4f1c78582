// The Restate side of bench/workflow: the two benchmark workflows as handlers of one service,
// each step a durable `ctx.run` of a no-op (journaled by the server before the handler goes
// on), the fan-out's steps started together and awaited with `RestatePromise.all`, then a
// last step that sees their outputs (the fan-in).
// Node 20 lacks Promise.withResolvers, which the SDK uses: this one line adds it.
(Promise as any).withResolvers ??= () => { let resolve: any, reject: any; const promise = new Promise((a, b) => { resolve = a; reject = b; }); return { promise, resolve, reject }; };

import * as restate from "@restatedev/restate-sdk";

const noop = async (): Promise<number> => 0;

const bench = restate.service({
  name: "bench",
  handlers: {
    seq3: async (ctx: restate.Context): Promise<string> => {
      await ctx.run("step1", noop);
      await ctx.run("step2", noop);
      await ctx.run("step3", noop);
      return "ok";
    },
    fan: async (ctx: restate.Context, width: number): Promise<number> => {
      const steps = [];
      for (let i = 0; i < width; i++) steps.push(ctx.run(`step${i}`, noop));
      const outputs = await restate.RestatePromise.all(steps);
      return await ctx.run("join", async () => outputs.length);
    },
  },
});

restate.endpoint().bind(bench).listen(Number(process.env.PORT ?? 9080));
