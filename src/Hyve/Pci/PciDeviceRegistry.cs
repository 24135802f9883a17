// SPDX-License-Identifier: BSD-2-Clause
using System.Globalization;

namespace Hyve.Pci;

/// <summary>One <c>-s [bus:]slot[:func],emulation[,conf]</c> entry: config keys pci.BUS.SLOT.FUNC.*.</summary>
public sealed record PciSlotConfig(int Bus, int Slot, int Function, string Emulation, IReadOnlyDictionary<string, string> Conf);

/// <summary>What a device factory gets: where the function goes, its emulation name and its conf keys.</summary>
public sealed record PciDeviceContext(PciBus Bus, int BusNumber, int Slot, int Function, string Emulation, IReadOnlyDictionary<string, string> Conf)
{
    /// <summary>The function's address as bhyve prints it.</summary>
    public string Where => $"pci.{BusNumber}.{Slot}.{Function}";

    /// <summary>The whole config tree, for machine-wide keys such as <c>virtio_msix</c> (null in unit tests).</summary>
    public Hyve.Config.ConfigTree? Root { get; init; }

    /// <summary>The VM's name (for derived serial numbers and addresses).</summary>
    public string VmName { get; init; } = "";

    /// <summary>A conf string, or null when absent.</summary>
    public string? Get(string key) => Conf.TryGetValue(key, out var v) ? v : null;

    /// <summary>A boolean conf key (bhyve's true/false, on/off, yes/no, 1/0), or <paramref name="fallback"/> when absent.</summary>
    public bool GetBool(string key, bool fallback)
    {
        if (!Conf.TryGetValue(key, out var s)) return fallback;
        return s.ToLowerInvariant() switch
        {
            "true" or "on" or "yes" or "1" => true,
            "false" or "off" or "no" or "0" => false,
            _ => throw new HostConfigException($"{Where}.{key}: '{s}' is not a boolean"),
        };
    }

    /// <summary>A numeric conf key (decimal or 0x-hex) that must fit 16 bits, or <paramref name="fallback"/> when absent.</summary>
    public ushort GetU16(string key, ushort fallback)
    {
        if (!Conf.TryGetValue(key, out var s)) return fallback;
        if (TryParse(s, out ulong v) && v <= 0xffff) return (ushort)v;
        throw new HostConfigException($"{Where}.{key}: '{s}' is not a 16-bit number");
    }

    private static bool TryParse(string s, out ulong v)
    {
        s = s.Trim();
        if (s.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            return ulong.TryParse(s.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out v);
        return ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out v);
    }
}

/// <summary>Creates a PCI function for a context; throws <see cref="HostConfigException"/> on bad configuration.</summary>
public delegate PciDevice PciDeviceFactory(PciDeviceContext context);

/// <summary>The PCI device types a bus builds from, by name: <see cref="PciDeviceTypes.All"/> (tests add their own).</summary>
public sealed class PciDeviceRegistry
{
    private readonly Dictionary<string, PciDeviceType> _types = new(StringComparer.Ordinal);

    /// <summary>A registry holding every type of <see cref="PciDeviceTypes.All"/>.</summary>
    public static PciDeviceRegistry CreateDefault()
    {
        var r = new PciDeviceRegistry();
        foreach (var t in PciDeviceTypes.All) r.Register(t);
        return r;
    }

    /// <summary>Adds or replaces a device type.</summary>
    public void Register(PciDeviceType type)
    {
        ArgumentNullException.ThrowIfNull(type);
        ArgumentException.ThrowIfNullOrEmpty(type.Name);
        _types[type.Name] = type;
    }

    /// <summary>Adds or replaces an implemented type with generic conf syntax (tests' shorthand).</summary>
    public void Register(string name, PciDeviceFactory factory) =>
        Register(new PciDeviceType(name, PciConfSyntax.Generic, factory ?? throw new ArgumentNullException(nameof(factory))));

    /// <summary>True when <paramref name="name"/> is a type hyve can build.</summary>
    public bool Contains(string name) => _types.TryGetValue(name, out var t) && t.Implemented;

    /// <summary>Names of the types hyve can build.</summary>
    public IEnumerable<string> Names
    {
        get
        {
            foreach (var t in _types.Values) if (t.Implemented) yield return t.Name;
        }
    }

    /// <summary>Creates the function; an unknown or unimplemented type is a host error.</summary>
    public PciDevice Create(PciDeviceContext context)
    {
        if (!_types.TryGetValue(context.Emulation, out var t))
            throw new HostConfigException($"{context.Where}: unknown PCI emulation '{context.Emulation}'");
        if (t.Factory is null) throw new HostConfigException($"{context.Where}: {t.NotImplementedReason}");
        return t.Factory(context);
    }
}
