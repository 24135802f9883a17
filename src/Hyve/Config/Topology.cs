// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Config;

/// <summary>
/// The guest CPU topology, derived from keys <c>cpus</c>, <c>sockets</c>, <c>cores</c>, <c>threads</c> and <c>maxcpus</c>
/// with bhyve's rules (bhyverun.c calc_topology): cores and threads default to 1, sockets defaults to cpus,
/// cpus defaults to sockets x cores x threads, and an explicit cpus must equal that product.
/// maxcpus (hyve's addition, named as in the <c>-c</c> syntax) defaults to cpus and may not be below it.
/// </summary>
public readonly record struct Topology(int Cpus, int Sockets, int Cores, int Threads, int MaxCpus)
{
    /// <summary>The most vCPUs a hyve VM may have: xAPIC IDs 0-254 (255 is broadcast), so MP tables and ACPI stay simple.</summary>
    public const int MaxVcpus = 255;

    /// <summary>Reads and checks the topology keys; throws <see cref="ConfigException"/> with bhyve's messages on a bad value.</summary>
    public static Topology FromConfig(ConfigTree config)
    {
        // Each field is first checked against bhyve's own range (1..65535) so the message names the bad key.
        bool explicitCpus = config.Get("cpus") is not null;
        int cpus = ReadField(config, "cpus", 1);
        int cores = ReadField(config, "cores", 1);
        int threads = ReadField(config, "threads", 1);
        int sockets = ReadField(config, "sockets", cpus);
        ulong product = (ulong)sockets * (ulong)cores * (ulong)threads;
        if (product > ushort.MaxValue)
            throw new ConfigException($"Computed number of vCPUs too high: {product}");
        if (explicitCpus)
        {
            if ((ulong)cpus != product)
                throw new ConfigException($"Topology ({sockets} sockets, {cores} cores, {threads} threads) does not match {cpus} vCPUs");
        }
        else
        {
            cpus = (int)product;
        }
        int maxcpus = ReadField(config, "maxcpus", cpus);
        if (maxcpus < cpus)
            throw new ConfigException($"maxcpus ({maxcpus}) is less than the number of vCPUs ({cpus})");
        if (maxcpus > MaxVcpus)
            throw new ConfigException($"{maxcpus} vCPUs requested but only {MaxVcpus} available");
        // APIC IDs are socket, core and thread bit fields (CpuTopology.ApicId), so counts that are not powers of two
        // leave gaps; the last vCPU has the highest ID, and it must fit the xAPIC's 8-bit ID register below the
        // broadcast ID 255, or two vCPUs would answer to one ID.
        uint highest = (uint)((sockets - 1) << (BitsFor(cores) + BitsFor(threads)) | (cores - 1) << BitsFor(threads) | (threads - 1));
        if (highest > MaxVcpus - 1)
            throw new ConfigException($"Topology ({sockets} sockets, {cores} cores, {threads} threads) needs APIC IDs up to {highest}, above the xAPIC's 254");
        return new Topology(cpus, sockets, cores, threads, maxcpus);
    }

    private static int BitsFor(int n) => n <= 1 ? 0 : System.Numerics.BitOperations.Log2((uint)(n - 1)) + 1;

    private static int ReadField(ConfigTree config, string key, int defaultValue)
    {
        var v = config.Get(key);
        if (v is null) return defaultValue;
        if (ConfigTree.TryParseInteger(v, out long n) && n >= 1 && n <= ushort.MaxValue) return (int)n;
        throw new ConfigException($"Invalid value for {key}: '{v}'");
    }
}
